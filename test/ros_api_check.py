"""Check the package's use of rclpy / launch / launch_ros against one distribution's API
(test/data/ros_api/<distro>.json, written by tools/ros_api_names.py). AST only: nothing of the package is imported.

What is checked, in cmdr_ros/, launch/*.py and test/node_harness.py:
- every import from these packages (module, and name in it);
- attributes of their modules and classes (``rclpy.init``, ``ReliabilityPolicy.BEST_EFFORT``);
- members used on instances whose type is known: ``self`` in a subclass (LifecycleNode -> Node), parameters
  annotated with such a class, names and ``self.x`` assigned from a constructor or from a method whose return
  annotation says its class (``create_publisher`` -> Publisher, ``create_client`` -> Client, ...);
- keyword arguments of calls to these functions, constructors (following ``**kwargs`` to the bases) and methods.

Alternatives: a ``try: <imports> except ImportError: <imports>`` block (cmdr_ros/ros/compat.py) passes when one of its
branches passes; ``getattr(obj, "name", default)`` is an optional use and not checked.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
API_DIR = REPO / "test" / "data" / "ros_api"
DISTROS = ("humble", "jazzy", "kilted")
PACKAGES = ("rclpy", "launch", "launch_ros")
UNKNOWN = None


def package_files() -> list[Path]:
    """The files whose ROS API use is checked: the package (node, CLI), the launch files, the test node harness."""
    return (sorted(REPO.glob("cmdr_ros/**/*.py")) + sorted(REPO.glob("launch/*.py"))
            + [REPO / "test" / "node_harness.py"])


class Api:
    def __init__(self, data: dict):
        self.distro = data["distro"]
        self.modules, self.classes, self.callables = data["modules"], data["classes"], data["callables"]
        self._members = {name: set(members) for name, members in self.classes.items()}
        self.rclpy_methods = {key.rpartition(".")[2] for key in self.callables
                              if key.startswith("rclpy.") and key.rpartition(".")[0] in self.classes}

    @classmethod
    def load(cls, distro: str) -> Api:
        return cls(json.loads((API_DIR / f"{distro}.json").read_text(encoding="utf-8")))

    def lookup(self, dotted: str) -> tuple[bool | None, str]:
        """(exists, what it is): True/False, or None when it cannot be told (deeper than the lists go); the
        qualified class/function/module name or ""."""
        if dotted in self.modules:
            return True, dotted
        owner, _, name = dotted.rpartition(".")
        if not owner:
            return False, ""
        if owner in self.modules:
            if name in self.modules[owner]:
                return True, self.modules[owner][name]
            return False, ""
        found, target = self.lookup(owner)
        if not found:
            return found, ""
        if target in self.classes:
            return self.member(target, name)
        return UNKNOWN, ""

    def member(self, cls: str, name: str) -> tuple[bool, str]:
        if name not in self._members[cls]:
            return False, ""
        qualified = f"{cls}.{name}"
        return True, qualified if qualified in self.callables else ""

    def signature(self, target: str) -> dict | None:
        if target in self.classes:
            return self.callables.get(f"{target}.__init__")
        return self.callables.get(target)


# types of expressions: ("mod"|"path", dotted name as written) or ("inst", qualified class of this distribution)
Type = tuple[str, str] | None


@dataclass
class Scope:
    names: dict[str, Type] = field(default_factory=dict)
    cls: str | None = None  # the API class ``self`` is, inside a subclass of one
    own: frozenset[str] = frozenset()  # names the subclass defines itself (methods, self.x): not checked
    self_attrs: dict[str, Type] = field(default_factory=dict)
    class_body: bool = False  # a def here is a method: its first parameter is ``self``


def other_rclpy_methods(distro: str) -> frozenset[str]:
    """rclpy method names another distribution has and ``distro`` has on no class at all."""
    apis = {d: Api.load(d) for d in DISTROS}
    return frozenset(set().union(*(a.rclpy_methods for a in apis.values())) - apis[distro].rclpy_methods)


class Checker:
    """Collects, for one distribution, every use in a file that its API does not have. ``foreign``: rclpy method
    names this distribution lacks, flagged also when called on an object whose type the checker cannot tell."""

    def __init__(self, api: Api, filename: str = "<source>", foreign: frozenset[str] | None = None):
        self.api, self.filename = api, filename
        self.foreign = other_rclpy_methods(api.distro) if foreign is None else foreign
        self.problems: list[str] = []

    # ------------------------------------------------------------------ reporting
    def problem(self, node: ast.AST, text: str) -> None:
        self.problems.append(f"{self.filename}:{getattr(node, 'lineno', 0)}: {self.api.distro}: {text}")

    def check_source(self, source: str) -> list[str]:
        self.block(ast.parse(source).body, Scope())
        return self.problems

    # ------------------------------------------------------------------ statements
    def block(self, body: list[ast.stmt], scope: Scope) -> None:
        for stmt in body:
            self.statement(stmt, scope)

    def statement(self, stmt: ast.stmt, scope: Scope) -> None:
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.name.split(".")[0] in PACKAGES:
                    self.need(stmt, alias.name)
                    scope.names[alias.asname or alias.name.split(".")[0]] = (
                        "mod", alias.name if alias.asname else alias.name.split(".")[0])
        elif isinstance(stmt, ast.ImportFrom):
            if stmt.level == 0 and stmt.module and stmt.module.split(".")[0] in PACKAGES:
                self.need(stmt, stmt.module)
                for alias in stmt.names:
                    path = f"{stmt.module}.{alias.name}"
                    self.need(stmt, path)
                    scope.names[alias.asname or alias.name] = ("path", path)
            else:
                for alias in stmt.names:
                    scope.names.pop(alias.asname or alias.name, None)
        elif isinstance(stmt, ast.Try) and any(self.catches_import_error(h) for h in stmt.handlers):
            self.alternatives(stmt, scope)
        elif isinstance(stmt, ast.ClassDef):
            self.class_def(stmt, scope)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.function(stmt, scope)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            value_type = self.expr(stmt.value, scope) if stmt.value is not None else UNKNOWN
            if isinstance(stmt, ast.AnnAssign) and value_type is UNKNOWN:
                value_type = self.annotation(stmt.annotation, scope)
            for target in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]):
                self.assign(target, value_type, scope)
        else:
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.stmt):
                    self.statement(child, scope)
                elif isinstance(child, ast.expr):
                    self.expr(child, scope)
                elif isinstance(child, ast.excepthandler):
                    if child.type is not None:
                        self.expr(child.type, scope)
                    self.block(child.body, scope)
                elif isinstance(child, ast.withitem):
                    self.expr(child.context_expr, scope)
                elif isinstance(child, (ast.match_case,)):
                    self.block(child.body, scope)

    @staticmethod
    def catches_import_error(handler: ast.excepthandler) -> bool:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)

    def alternatives(self, stmt: ast.Try, scope: Scope) -> None:
        """The first branch (the try body, then each ImportError handler) that passes on this distribution is the one
        this distribution runs; none passing: the try body's problems are reported."""
        branches = [stmt.body] + [h.body for h in stmt.handlers if self.catches_import_error(h)]
        first = None
        for body in branches:
            probe = Checker(self.api, self.filename, self.foreign)
            branch_scope = Scope(dict(scope.names), scope.cls, scope.own, scope.self_attrs)
            probe.block(body, branch_scope)
            if first is None:
                first = (probe, branch_scope)
            if not probe.problems:
                scope.names.update(branch_scope.names)
                break
        else:
            self.problems.extend(first[0].problems)
            scope.names.update(first[1].names)
        self.block(stmt.orelse + stmt.finalbody, scope)

    def class_def(self, stmt: ast.ClassDef, scope: Scope) -> None:
        base = None
        for b in stmt.bases:
            t = self.expr(b, scope)
            if t is not None and t[0] == "path":
                found, target = self.api.lookup(t[1])
                if found and target in self.api.classes and base is None:
                    base = target
        own = {s.name for s in stmt.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        own |= {t.id for s in stmt.body if isinstance(s, (ast.Assign, ast.AnnAssign))
                for t in (s.targets if isinstance(s, ast.Assign) else [s.target]) if isinstance(t, ast.Name)}
        own |= {n.attr for n in ast.walk(stmt) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                and isinstance(n.value, ast.Name) and n.value.id == "self"
                and not (base and n.attr in self.api._members[base])}
        inner = Scope(dict(scope.names), base, frozenset(own), {}, class_body=True)
        self.block(stmt.body, inner)

    def function(self, stmt: ast.FunctionDef | ast.AsyncFunctionDef, scope: Scope) -> None:
        for d in stmt.decorator_list:
            self.expr(d, scope)
        inner = Scope(dict(scope.names), scope.cls, scope.own, scope.self_attrs)
        args = stmt.args
        for a in args.posonlyargs + args.args + args.kwonlyargs:
            inner.names[a.arg] = self.annotation(a.annotation, scope) if a.annotation is not None else UNKNOWN
        if scope.class_body and (args.posonlyargs + args.args) and not any(
                isinstance(d, ast.Name) and d.id == "staticmethod" for d in stmt.decorator_list):
            inner.names[(args.posonlyargs + args.args)[0].arg] = ("self", scope.cls)
        for default in args.defaults + [d for d in args.kw_defaults if d is not None]:
            self.expr(default, scope)
        self.block(stmt.body, inner)

    def annotation(self, expr: ast.expr | None, scope: Scope) -> Type:
        """An annotation naming an API class (also quoted, or ``X | None``) types the name as its instance."""
        if expr is None:
            return UNKNOWN
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            try:
                expr = ast.parse(expr.value, mode="eval").body
            except SyntaxError:
                return UNKNOWN
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
            return self.annotation(expr.left, scope) or self.annotation(expr.right, scope)
        if isinstance(expr, (ast.Name, ast.Attribute)):
            t = self.expr(expr, scope, check=False)
            if t is not None and t[0] == "path":
                found, target = self.api.lookup(t[1])
                if found and target in self.api.classes:
                    return ("inst", target)
        return UNKNOWN

    def assign(self, target: ast.expr, value: Type, scope: Scope) -> None:
        if isinstance(target, ast.Name):
            scope.names[target.id] = value
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                and scope.names.get(target.value.id, UNKNOWN) is not None \
                and scope.names[target.value.id][0] == "self" and target.attr in scope.own:
            scope.self_attrs[target.attr] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                self.assign(elt, UNKNOWN, scope)
        else:
            self.expr(target, scope)

    # ------------------------------------------------------------------ expressions
    def need(self, node: ast.AST, dotted: str) -> None:
        found, _ = self.api.lookup(dotted)
        if found is False:
            self.problem(node, f"no {dotted}")

    def expr(self, expr: ast.expr | None, scope: Scope, check: bool = True) -> Type:
        """The type of ``expr`` (when it is an API module, name or instance) after checking what it uses."""
        if expr is None:
            return UNKNOWN
        if isinstance(expr, ast.Name):
            return scope.names.get(expr.id, UNKNOWN)
        if isinstance(expr, ast.Attribute):
            return self.attribute(expr, self.expr(expr.value, scope, check), scope, check)
        if isinstance(expr, ast.Call):
            return self.call(expr, scope)
        for child in ast.iter_child_nodes(expr):
            if isinstance(child, ast.expr):
                self.expr(child, scope, check)
            elif isinstance(child, ast.comprehension):
                self.expr(child.iter, scope, check)
                for cond in child.ifs:
                    self.expr(cond, scope, check)
            elif isinstance(child, ast.keyword):
                self.expr(child.value, scope, check)
        return UNKNOWN

    def instance_class(self, t: Type, name: str, scope: Scope) -> str | None:
        """The API class whose member ``name`` this is, None when not checked (own members of a class)."""
        if t is None or t[0] not in ("self", "inst"):
            return None
        return None if t[0] == "self" and name in scope.own else t[1]

    def attribute(self, expr: ast.Attribute, base: Type, scope: Scope, check: bool) -> Type:
        if base is None:
            return UNKNOWN
        if base[0] in ("mod", "path"):
            dotted = f"{base[1]}.{expr.attr}"
            found, target = self.api.lookup(dotted)
            if found is False and check:
                self.problem(expr, f"no {dotted}")
            return ("path", dotted)
        if base[0] == "self" and expr.attr in scope.own:
            return scope.self_attrs.get(expr.attr, UNKNOWN)
        cls = self.instance_class(base, expr.attr, scope)
        if cls is None:
            return UNKNOWN
        found, _ = self.api.member(cls, expr.attr)
        if not found and check:
            self.problem(expr, f"{cls} has no {expr.attr}")
        return ("member", f"{cls}.{expr.attr}")

    def call(self, expr: ast.Call, scope: Scope) -> Type:
        if isinstance(expr.func, ast.Name) and expr.func.id == "getattr" and len(expr.args) == 3:
            self.expr(expr.args[0], scope)  # getattr(obj, "name", default): optional, not checked
            self.expr(expr.args[2], scope)
            return UNKNOWN
        if isinstance(expr.func, ast.Attribute) and isinstance(expr.func.value, ast.Call) \
                and isinstance(expr.func.value.func, ast.Name) and expr.func.value.func.id == "super" \
                and scope.cls:  # super().__init__(...) of an API subclass
            func_type: Type = self.attribute(expr.func, ("inst", scope.cls), scope, True)
        else:
            func_type = self.expr(expr.func, scope)
        for arg in expr.args:
            self.expr(arg, scope)
        for kw in expr.keywords:
            self.expr(kw.value, scope)
        if func_type is None:
            receiver = self.expr(expr.func.value, scope, check=False) if isinstance(expr.func, ast.Attribute) else None
            own = receiver is not None and receiver[0] == "self" and expr.func.attr in scope.own
            if isinstance(expr.func, ast.Attribute) and expr.func.attr in self.foreign and not own:
                self.problem(expr, f"{ast.unparse(expr.func)}(): {self.api.distro}'s rclpy has no method "
                                   f"{expr.func.attr} (on any class; the object's type is not known here)")
            return UNKNOWN
        if func_type[0] == "path":
            found, target = self.api.lookup(func_type[1])
            if not found or not target:
                return UNKNOWN
        elif func_type[0] == "member":
            target = func_type[1]
        else:
            return UNKNOWN
        sig = self.api.signature(target)
        if sig is not None:
            for kw in expr.keywords:
                if kw.arg is not None and kw.arg not in sig["params"] and not sig["varkw"]:
                    self.problem(expr, f"{target}() takes no keyword {kw.arg}")
        if target in self.api.classes:
            return ("inst", target)
        if sig is not None and sig["returns"]:
            return ("inst", sig["returns"])
        return UNKNOWN


def check_file(path: Path, api: Api, foreign: frozenset[str] | None = None) -> list[str]:
    return Checker(api, str(path.relative_to(REPO)), foreign).check_source(path.read_text(encoding="utf-8"))


def check_package(api: Api) -> list[str]:
    foreign = other_rclpy_methods(api.distro)
    return [problem for path in package_files() for problem in check_file(path, api, foreign)]
