"""``cmdr_inspection``: the managed (lifecycle) inspection node, thin over the package's shared modules.

Every synchronized set and every orphan input gets exactly one decision, stamped with its header: subscription
callbacks (``inputs.py``) -> approximate-time synchronizer (``sync.py``; an input without partner within
``sync.timeout``, evicted or duplicated gets an ``unmatched`` result) -> ``DecisionEngine.submit`` queues the part
(``overload``: judge_all keeps ``worker.queue_size`` waiting, the oldest gets the fail-safe when full; newest keeps
one) -> inference thread -> ``FrameJudge`` (alignment, model, decision rule, fail-safe; ``frame_judge.py``) ->
``DecisionEngine.decide`` (``engine.py``: a sequence number under the decision lock, then the outbox thread sends, in
number order, the audit row and the messages of ``outputs.py``; no callback waits for that). A watchdog gives every
part not decided within ``time_budget`` of its arrival the fail-safe and reports a stuck inference on
``/diagnostics`` (``status.py``). Inference never runs in a callback. At SIGINT/SIGTERM every waiting part gets its
fail-safe decision before exit.

Lifecycle: configure validates every parameter (``parameters.py``), loads the checkpoint, warms the model up and
creates the publishers; activate subscribes; deactivate unsubscribes (waiting parts get the fail-safe) and frees
cached GPU memory; cleanup drops the model. ``autostart`` walks to active and exits non-zero when it cannot.
``~/ready`` (latched) is true only while active with a model; the watchdog, /diagnostics and autostart timers run
on a steady clock (sim time only stamps). A controller's view: docs/controller.md. While configured, a set of
``checkpoint`` or ``~/reload_model`` changes the model between two parts (``model_change.py``).
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
import uuid
from typing import TYPE_CHECKING, Any, Callable

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from std_srvs.srv import Trigger

from cmdr_ros import CmdrError
from cmdr_ros.audit.store import AuditStore
from cmdr_ros.ros import topics
from cmdr_ros.ros.compat import add_post_set_parameters_callback, add_pre_set_parameters_callback
from cmdr_ros.ros.node.audit import close_audit, open_audit
from cmdr_ros.ros.node.engine import DecisionEngine, Outlet
from cmdr_ros.ros.node.evidence_writer import close_evidence, evidence_status, open_evidence
from cmdr_ros.ros.node.frame_judge import FrameJudge, free_gpu, warm_up
from cmdr_ros.ros.node.inputs import NodeInputs
from cmdr_ros.ros.node.model_change import ModelChange
from cmdr_ros.ros.node.model_swap import ModelSwap
from cmdr_ros.ros.node.parameters import PARAMETERS, check_all, check_set, coerce_parameters, refusal
from cmdr_ros.ros.node.settle import wait_acked
from cmdr_ros.ros.node.status import (InputIdle, ThrottledLog, audit_status, faults, hardware_id, node_status,
                                      pretrained_on_cpu, recent_faults, status_name)
from cmdr_ros.ros.node.tf_source import TfSource, tf_fallback
from cmdr_ros.ros.node.wiring import (DIAGNOSTICS_QOS, ReadyState, announce_model, create_outputs, declare_parameters,
                                      steady_clock)

if TYPE_CHECKING:
    from cmdr_ros.model.detector import CMDRDetector

WATCH_PERIOD_S = 0.05


class InspectionNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("cmdr_inspection", **kwargs)
        self._judge_lock = threading.Lock()  # the judge and run-time parameter changes applied to it
        self._start_problems = declare_parameters(self)  # values given at start that ROS itself refused
        self._refused = len(self._start_problems)  # parameter sets refused since start (at start and at run time)
        add_pre_set_parameters_callback(self, coerce_parameters)  # compat: emulated on Humble
        self.add_on_set_parameters_callback(self._on_set_parameters)
        add_post_set_parameters_callback(self, self._applied)
        self.exit_code: int | None = None  # set when the node must end (autostart failed)
        self.detector: CMDRDetector | None = None
        self.mode = ""
        self.judge: FrameJudge | None = None
        self._pubs: dict[str, Any] = {}
        self._warn = ThrottledLog(self.get_logger())
        self._engine = DecisionEngine(lambda: self.judge, self._p, self._warn)  # queue, decisions, counters
        self.inputs = NodeInputs(self, self._engine, self._p, self._warn)  # subscriptions while active
        self._run_id = uuid.uuid4().hex[:16]  # with seq, names each decision of this process in the audit store
        self._audit: AuditStore | None = None
        self._evidence = None  # evidence_writer.EvidenceWriter while configured with evidence.dir
        self._tf = TfSource(self, self._warn, lambda: tf_fallback(self._p("extrinsics")))  # fallback read when said
        self._idle = InputIdle()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self.state_text = "unconfigured"  # what the node says of its state (log, /diagnostics)
        self._watch_group = MutuallyExclusiveCallbackGroup()
        self._watch_timer = None
        self._model_change: ModelChange | None = None  # model changes at run time (set at configure)
        self._reload_srv = self.create_service(Trigger, "~/reload_model", self._on_reload_model,
                                               callback_group=MutuallyExclusiveCallbackGroup())
        # /diagnostics is a plain publisher: a node that cannot configure still says why
        self._diag_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS, DIAGNOSTICS_QOS)
        self._ready = ReadyState(self)  # ~/ready, latched: false until active with a model
        # the timers that guard the line run on a steady clock: with use_sim_time and no /clock they still fire
        self._diag_timer = self.create_timer(float(self._p("diagnostics_period")), self._publish_diagnostics,
                                             callback_group=MutuallyExclusiveCallbackGroup(), clock=steady_clock())
        if self._p("autostart"):  # its own group: parameter and lifecycle services answer during a long configure
            self._autostart_timer = self.create_timer(0.0, self._autostart,
                                                      callback_group=MutuallyExclusiveCallbackGroup(),
                                                      clock=steady_clock())

    @property
    def lifecycle_state(self) -> str:
        """The lifecycle state's label (unconfigured, configuring, inactive, activating, active, ...)."""
        return str(self._state_machine.current_state[1])

    # ---------------------------------------------------------------- parameters
    def _p(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:  # an optional parameter nobody set
            return None

    def _values(self) -> dict[str, Any]:
        return {name: self._p(name) for name in PARAMETERS}

    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        """Every set goes through here (the parameter services call it): a set ROS itself refuses (type, range,
        read-only) is explained in the node's words, and every refused set is logged (the first of each parameter
        at once, repeats within 10 s counted) and counted (``parameters_refused`` on /diagnostics)."""
        result = super().set_parameters_atomically(parameter_list)
        if not result.successful:
            names = [p.name for p in parameter_list]
            if len(parameter_list) == 1:
                result.reason = refusal(names[0], parameter_list[0].value, result.reason)
            self._refused += 1
            self._warn(f"parameter {'+'.join(names)}", f"set refused: {result.reason}")
        return result

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        judge = self.judge
        answer = check_set(params, configured=self.detector is not None,
                           resolve_threshold=judge.resolve_threshold if judge is not None else None)
        if not answer.ok:  # logged by set_parameters_atomically
            return SetParametersResult(successful=False, reason=answer.problem)
        if (ckpt := next((p for p in params if p.name == "checkpoint"), None)) is not None:
            problem = self._checkpoint_set(str(ckpt.value))
            if problem is not None:
                return SetParametersResult(successful=False, reason=problem)
        self._start_problems = [x for x in self._start_problems if x.split(":")[0] not in {p.name for p in params}]
        for note in answer.notes:
            self.get_logger().info(note)
        return SetParametersResult(successful=True)

    def _applied(self, params: list[Parameter]) -> None:
        """After a run-time set is stored: apply it to the judge. Under the lock configure builds the judge with,
        so a value set while configure runs is never lost (either configure reads it, or it is applied here)."""
        with self._judge_lock:
            if self.judge is not None:
                self.judge.apply(params)

    # ---------------------------------------------------------------- lifecycle
    def _autostart(self) -> None:
        self.destroy_timer(self._autostart_timer)
        ok = self.trigger_configure() == TransitionCallbackReturn.SUCCESS
        ok = ok and self.trigger_activate() == TransitionCallbackReturn.SUCCESS
        if not ok:
            self.get_logger().error(f"autostart failed ({self.state_text}): exiting with status 1")
            self._publish_diagnostics()
            self.exit_code = 1
        else:
            self.get_logger().info(f"autostart: {self.state_text}")

    def _refuse(self, why: str) -> TransitionCallbackReturn:
        self.state_text = f"cannot configure: {why}"
        self.get_logger().error(self.state_text)
        self.detector, self.judge = None, None
        self._publish_diagnostics()
        return TransitionCallbackReturn.FAILURE

    def _guarded(self, name: str, transition: Callable[[LifecycleState], TransitionCallbackReturn],
                 state: LifecycleState) -> TransitionCallbackReturn:
        """Run a transition; an exception is logged with its cause, what it created is released, and the
        transition fails (rclpy would swallow it without a word)."""
        try:
            return transition(state)
        except Exception as e:  # noqa: BLE001 - any failure of a transition must be reported, not lost
            self._ready.set(False)
            self.state_text = f"cannot {name}: {type(e).__name__}: {e}"
            self.get_logger().error(f"{self.state_text}\n{traceback.format_exc(limit=5)}")
            try:
                if name == "activate":
                    self._unsubscribe()
                elif name == "configure":
                    self.teardown()
            except Exception as cleanup_error:  # noqa: BLE001 - report the first cause, not the clean-up's
                self.get_logger().error(f"releasing after the failed {name}: {cleanup_error}")
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("configure", self._configure, state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("activate", self._activate, state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("deactivate", self._deactivate, state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("cleanup", self._cleanup, state)

    def _configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from cmdr_ros.model.checkpoint import load_checkpoint  # torch import only when configuring

        values = self._values()
        problems = self._start_problems + check_all(values)
        if problems:
            return self._refuse("; ".join(problems))
        if not values["checkpoint"]:
            return self._refuse("parameter 'checkpoint' is empty: give a model trained with `cmdr train`")
        try:
            self.detector = load_checkpoint(values["checkpoint"], values["device"], values["weights_2d"] or None,
                                            values["weights_3d"] or None, expected_mode=values["mode"],
                                            require_threshold=values["threshold"] < 0)
            lookup = self._tf.lookup(bool(values["use_tf"]))
            with self._judge_lock:  # the values now, with any set while the model loaded
                self.judge = FrameJudge.from_params(self.detector, self._values(), lookup)
        except CmdrError as e:
            return self._refuse(str(e))
        except Exception as e:  # noqa: BLE001 - e.g. CUDA errors: the node must say why, not die
            return self._refuse(f"{type(e).__name__}: {e}")
        self.mode = self.detector.config.mode
        if values["warmup"]:
            self._warm_up()
        self._pubs = create_outputs(self, values)
        announce_model(self._pubs, self.get_clock().now().to_msg(), self.detector, values["checkpoint"])
        self._audit = open_audit(values, self.get_logger(), self._warn)
        self._evidence = open_evidence(values, self.get_fully_qualified_name(), self._p, self.get_logger(), self._warn)
        self._stop.clear()
        self._model_change = ModelChange(self, ModelSwap(values["device"], values["weights_2d"], values["weights_3d"]),
                                         self._engine, self._pubs, self._values, self._judge_lock, self._warn,
                                         self._model_changed)
        self._engine.outlet = Outlet(self._pubs, self._audit, self.mode, self.detector.model_id,
                                     self.get_fully_qualified_name(), self._run_id, self._evidence)
        self._worker = threading.Thread(target=self._engine.work, args=(self._stop, self.context.ok),
                                        name="cmdr_inference", daemon=True)
        self._worker.start()
        self._engine.reset_stats()
        self.state_text = "configured"
        self.get_logger().info(
            f"configured: mode {self.mode}, model {self.detector.model_id}, device {self.detector.runtime}, "
            f"threshold {self.judge.threshold:.4f}, time budget {values['time_budget']:g} s, "
            f"overload {values['overload']}")
        return TransitionCallbackReturn.SUCCESS

    # ---------------------------------------------------------------- model change (model_change.py)
    def _checkpoint_set(self, path: str) -> str | None:
        """A run-time set of ``checkpoint``: unconfigured, the value is read at configure; inactive or active, the
        model is changed now (``_change_model``). Why it is refused, or None."""
        state = self.lifecycle_state
        if state in ("inactive", "active") and self.detector is not None:
            return self._change_model(path)
        if state != "unconfigured":
            return f"the node is {state}: set checkpoint when it is unconfigured, inactive or active"
        return None

    def _on_reload_model(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """``~/reload_model``: load the file named by ``checkpoint`` again (e.g. replaced in place) and change to it."""
        path = str(self._p("checkpoint"))
        if self.detector is None or self.lifecycle_state not in ("inactive", "active"):
            problem = f"no model to change: the node is {self.lifecycle_state}"
        else:
            problem = self._change_model(path)
        response.success = problem is None
        response.message = problem or f"model {self.detector.model_id} in service ({path})"
        return response

    def _change_model(self, path: str) -> str | None:
        """A model change (``model_change.py``): None when done, else why it was refused."""
        if self._model_change is None:
            return "no model to change: the node is not configured"
        return self._model_change.change(path)

    def _model_changed(self) -> None:
        free_gpu(self.detector)
        self._publish_diagnostics()

    def _warm_up(self) -> None:
        t0 = time.perf_counter()
        try:
            warm_up(self.detector)  # a frame of the simulated cell, or a scan for a "chunks" model
            self.get_logger().info(f"warm-up frame in {1e3 * (time.perf_counter() - t0):.0f} ms")
        except CmdrError as e:  # a warm-up that does not fit the model is not fatal
            self.get_logger().warning(f"warm-up skipped: {e}")

    def _activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self.inputs.subscribe(self.mode)
        except CmdrError as e:
            self.state_text = f"cannot activate: {e}"
            self.get_logger().error(self.state_text)
            return TransitionCallbackReturn.FAILURE
        self._watch_timer = self.create_timer(WATCH_PERIOD_S, self._watch, callback_group=self._watch_group,
                                              clock=steady_clock())
        self._idle.reset()  # inputs received, and when that count last changed
        self.state_text = "active"
        subscribed = ", ".join(self.resolve_topic_name(t) for t in self.inputs.names)
        self.get_logger().info(f"active: subscribed to {subscribed} ({self._p('input.reliability')}, sync backend "
                               f"{self.inputs.sync.backend})")
        result = super().on_activate(state)  # the lifecycle publishers first: then ready
        self._ready.set(result == TransitionCallbackReturn.SUCCESS and self.judge is not None)
        return result

    def _deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_and_settle("shutdown", "the node was deactivated before this part was judged")
        free_gpu(self.detector)
        self.state_text = "inactive"
        return super().on_deactivate(state)

    def _unsubscribe(self) -> None:
        if self._watch_timer is not None:
            self.destroy_timer(self._watch_timer)
            self._watch_timer = None
        self.inputs.unsubscribe()

    def teardown(self) -> None:
        """Release what configure created (cleanup, a failed configure, and ``main`` at exit): every part still held
        gets its fail-safe decision, the inference thread stops, the last decisions go out, then the audit store, the
        publishers and the model are released."""
        self.stop_and_settle("shutdown", "the node shut down before this part was judged")
        self._stop.set()
        self._engine.queue.wake()
        if self._worker is not None:
            self._worker.join(timeout=5)
            if self._worker.is_alive():
                self.get_logger().warning("the inference thread did not stop within 5 s; leaving it behind")
            self._worker = None
        if not self._engine.flush():  # the last decisions out before their publishers and store go
            self.get_logger().error("decisions still not recorded and published at teardown")
        self._engine.outlet = None
        audit, self._audit = self._audit, None
        close_audit(audit, self.get_logger())
        evidence, self._evidence = self._evidence, None
        close_evidence(evidence, self.get_logger())
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        free_gpu(self.detector)
        self.detector, self.judge = None, None

    def _cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.teardown()
        self._tf.release()
        self.state_text = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded("shutdown", self._shutdown, state)

    def _shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_and_settle("shutdown", "the node shut down before this part was judged")
        self.teardown()
        return TransitionCallbackReturn.SUCCESS

    # ---------------------------------------------------------------- watchdog and stopping
    def _watch(self) -> None:
        """Unmatched inputs past sync.timeout, parts past time_budget, a stuck inference."""
        self.inputs.expire()
        budget = float(self._p("time_budget"))
        if self._engine.watch(budget):
            self.get_logger().error(f"inference has been running for more than time_budget {budget:g} s: every part "
                                    "gets the fail-safe decision until it returns")
            self._publish_diagnostics()

    def wait_quiet(self, quiet_s: float = 0.3, max_wait_s: float = 3.0) -> None:
        """Start stopping while the executor still spins: sets matched from now on are decided at once (fail-safe),
        and this returns when no input arrived for ``quiet_s`` (at most ``max_wait_s``), so that the readers are
        (nearly) empty before the executor is shut down. ~/ready goes false first."""
        self._ready.set(False, wait_acked_s=0.5)
        self.inputs.closing = True
        self.inputs.wait_quiet(quiet_s, max_wait_s)

    def stop_and_settle(self, kind: str, reason: str) -> int:
        """Stop judging and give every part not decided yet the fail-safe decision: take what the input readers
        still hold (best with the executor stopped: nothing else takes, and destruction is immediate), unsubscribe,
        then answer the inputs waiting for a partner and every queued or running part. ~/ready goes false first."""
        self._ready.set(False, wait_acked_s=0.5)
        n0 = self._engine.order.last
        self.inputs.closing = True
        self.inputs.take_waiting()
        self._unsubscribe()  # right after the drain: what arrives from here on is refused, not accepted unanswered
        self.settle_all(kind, reason)
        return self._engine.order.last - n0

    def settle_all(self, kind: str, reason: str) -> int:
        """Give every queued part and the one in inference the fail-safe decision (inputs waiting for a partner are
        answered when ``stop_and_settle`` closes the synchronizer); wait (up to 2 s) until the decisions are
        acknowledged. Returns how many were settled."""
        n = self._engine.settle_all(kind, reason)
        if n:
            wait_acked([self._pubs[k] for k in ("result", "decision", "reject") if k in self._pubs], 2.0)
        return n

    # ---------------------------------------------------------------- diagnostics
    def snapshot(self) -> dict[str, Any]:
        """Counters for diagnostics and tests."""
        out, inputs = self._engine.counters(), self.inputs.counters()
        out["pending_sync"] = inputs["pending_sync"]
        out["input_idle_s"] = self._idle.idle_s(inputs["received"], time.monotonic())
        out["recent_faults"] = recent_faults(out.pop("recent"), time.monotonic(),
                                             float(self._p("diagnostics.window")))
        out["late_inputs"] = inputs["late_inputs"]
        out["qos_incompatible_now"] = self.inputs.qos_mismatches() if self.inputs.sync is not None else {}
        out["parameters_refused"] = self._refused
        return out

    def _publish_diagnostics(self) -> None:
        s, judge, det, audit = self.snapshot(), self.judge, self.detector, self._audit
        fqn, model = self.get_fully_qualified_name(), {}
        if judge is not None and det is not None:
            model = {"threshold": judge.threshold, "model_id": det.model_id, "device": det.runtime}
        hw_id = hardware_id(self._p("hardware_id"), fqn)
        arr = DiagnosticArray(status=[
            node_status(s, state=self.state_text, judging=judge is not None, time_budget=float(self._p("time_budget")),
                        found=self._faults(s, det), mode=self.mode, name=status_name(fqn, "node"), hw_id=hw_id,
                        **model),
            audit_status(audit.health() if audit is not None else None, enabled=bool(self._p("audit.enabled")),
                         name=status_name(fqn, "audit"), hw_id=hw_id),
            evidence_status(self._evidence.health() if self._evidence is not None else None,
                            name=status_name(fqn, "evidence"), hw_id=hw_id,
                            window=float(self._p("diagnostics.window")))])
        arr.header.stamp = self.get_clock().now().to_msg()
        try:
            self._diag_pub.publish(arr)
        except Exception:  # noqa: BLE001 - the context may be going away at shutdown
            pass

    def _faults(self, s: dict[str, Any], det: CMDRDetector | None) -> list[tuple[bytes, str]]:
        """What is wrong now besides a stuck inference, each with its level (``node_status.faults``)."""
        return faults(s, stale_after=float(self._p("diagnostics.stale_after")), inputs_watched=self.inputs.sync is not None,
                      pretrained_cpu=pretrained_on_cpu(det), unsent_after=float(self._p("time_budget")),
                      window=float(self._p("diagnostics.window")), sync_timeout=float(self._p("sync.timeout")))


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM (every waiting part then gets its fail-safe decision) or until autostart
    fails (exit status 1); ``node_main.run``."""
    from cmdr_ros.ros.node.main import run

    return run(InspectionNode, args)


if __name__ == "__main__":
    sys.exit(main())
