#!/usr/bin/env python3
"""Write the rclpy / launch / launch_ros API of each ROS 2 distribution as name lists: test/data/ros_api/<distro>.json.

Reads Python sources only (``ast``; nothing is imported):

- humble, jazzy: ``<ros_api>/<distro>/{rclpy,launch,launch_ros}`` (upstream commits in its SOURCES.txt);
- kilted: rclpy from the installed PyPI wheel (``rclpy`` in this interpreter's site-packages, found without importing
  it), launch and launch_ros from ``<ros_api>/rolling`` (kilted branched from rolling; no kilted copy is kept).

Each file holds:

- ``modules``: {module: {top-level name: what it resolves to}}; the value is the qualified name of the class, function
  or module it binds (following imports inside these packages), "" for anything else (constants, outside imports);
- ``classes``: {qualified class: sorted members}: methods, class attributes and ``self.x`` attributes, own and
  inherited (bases resolved inside the packages, e.g. rclpy.lifecycle LifecycleNode -> rclpy.node Node);
- ``callables``: {qualified function or Class.method: {"params": names a caller may pass by keyword, "varkw": takes
  **kwargs that go nowhere known, "returns": qualified class of the return annotation or ""}}; a method that passes
  its **kwargs on gets the parameters of where they go (launch_ros Node -> ExecuteProcess -> ExecuteLocal; rclpy
  LifecycleNode -> Node).

test/test_ros_api.py checks the package's use of these APIs against the files and that they are what this script
writes now. Run: python tools/ros_api_names.py [--ros-api ../shared/ros_api (default; or $CMDR_SHARED_ROS_API)]
[--out test/data/ros_api] [--distro humble ...]
"""
from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import json
import os
import sys
from pathlib import Path

PACKAGES = ("rclpy", "launch", "launch_ros")
DISTROS = ("humble", "jazzy", "kilted")
KILTED_LAUNCH_FROM = "rolling"


def package_roots(distro: str, ros_api: Path) -> dict[str, Path]:
    """Where each package's sources for ``distro`` are (see the module text)."""
    if distro != "kilted":
        return {name: ros_api / distro / name for name in PACKAGES}
    spec = importlib.util.find_spec("rclpy")  # finds the installed package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("kilted: no rclpy installed in this interpreter (pip install -r requirements-ros.txt)")
    roots = {name: ros_api / KILTED_LAUNCH_FROM / name for name in ("launch", "launch_ros")}
    return {"rclpy": Path(list(spec.submodule_search_locations)[0]), **roots}


def module_files(roots: dict[str, Path]) -> dict[str, Path]:
    files = {}
    for package, root in roots.items():
        if not root.is_dir():
            raise SystemExit(f"no sources at {root}")
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "__pycache__" in parts or "test" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join((package, *parts))] = path
    return files


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def public(name: str) -> bool:
    """Signatures are kept for public functions and methods and for constructors (members: all, private too)."""
    return not name.startswith("_") or name == "__init__"


class Module:
    """One source file: its top-level bindings (name -> import target or own definition) and its classes."""

    def __init__(self, name: str, path: Path):
        self.name, self.is_package = name, path.name == "__init__.py"
        self.tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        self.bindings: dict[str, tuple[str, str]] = {}  # name -> ("import", dotted) | ("class"|"def"|"other", "")
        self.classes: dict[str, ast.ClassDef] = {}
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        for node in self._top_level(self.tree.body):
            self._bind(node)

    def _top_level(self, body: list[ast.stmt]):
        """Statements at module level, also inside if/try blocks (``try: import x except ImportError: ...``)."""
        for node in body:
            if isinstance(node, ast.If):
                yield from self._top_level(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                yield from self._top_level(node.body + node.orelse + node.finalbody +
                                           [s for h in node.handlers for s in h.body])
            else:
                yield node

    def _bind(self, node: ast.stmt) -> None:
        if isinstance(node, ast.ClassDef):
            self.bindings[node.name] = ("class", "")
            self.classes[node.name] = node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.bindings[node.name] = ("def", "")
            self.functions[node.name] = node
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self.bindings[alias.asname] = ("import", alias.name)
                else:
                    top = alias.name.split(".")[0]
                    self.bindings.setdefault(top, ("import", top))
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(self.name, self.is_package, node.level, node.module)
            for alias in node.names:
                if alias.name != "*":
                    self.bindings[alias.asname or alias.name] = ("import", f"{source}.{alias.name}")
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        self.bindings.setdefault(name.id, ("other", ""))


class Api:
    """The resolved API of one distribution's packages."""

    def __init__(self, files: dict[str, Path]):
        self.modules = {name: Module(name, path) for name, path in files.items()}

    def resolve(self, dotted: str, depth: int = 0) -> str:
        """The qualified name of the class/function/module ``dotted`` ends at, "" when outside these packages or
        not a class, function or module."""
        if depth > 20:
            return ""
        if dotted in self.modules:
            return dotted
        module, _, name = dotted.rpartition(".")
        mod = self.modules.get(module)
        if mod is None or name not in mod.bindings:
            return ""
        kind, target = mod.bindings[name]
        if kind in ("class", "def"):
            return dotted
        if kind == "import":
            return self.resolve(target, depth + 1)
        return ""

    def resolve_expr(self, module: Module, expr: ast.expr) -> str:
        if isinstance(expr, ast.Name):
            return self.resolve(f"{module.name}.{expr.id}")
        if isinstance(expr, ast.Attribute):
            base = self.resolve_expr(module, expr.value)
            return self.resolve(f"{base}.{expr.attr}") if base else ""
        if isinstance(expr, ast.Subscript):  # Generic[T], Base[MsgT]
            return self.resolve_expr(module, expr.value)
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):  # "Publisher" forward references
            try:
                return self.resolve_expr(module, ast.parse(expr.value, mode="eval").body)
            except SyntaxError:
                return ""
        return ""

    def class_def(self, qualified: str) -> tuple[Module, ast.ClassDef] | None:
        module, _, name = qualified.rpartition(".")
        mod = self.modules.get(module)
        if mod is None or name not in mod.classes:
            return None
        return mod, mod.classes[name]

    @functools.lru_cache(maxsize=None)
    def bases(self, qualified: str) -> list[str]:
        found = self.class_def(qualified)
        if found is None:
            return []
        mod, cls = found
        return [b for b in (self.resolve_expr(mod, base) for base in cls.bases) if b and self.class_def(b)]

    @functools.lru_cache(maxsize=None)
    def mro(self, qualified: str) -> list[str]:
        order, todo = [], [qualified]
        while todo:
            name = todo.pop(0)
            if name not in order:
                order.append(name)
                todo.extend(self.bases(name))
        return order

    @functools.lru_cache(maxsize=None)
    def own_members(self, qualified: str) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef | None]:
        _, cls = self.class_def(qualified)
        members: dict[str, ast.FunctionDef | ast.AsyncFunctionDef | None] = {}
        for node in cls.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                members.setdefault(node.name, node)
                for sub in ast.walk(node):  # self.x = ... in any method
                    targets = (sub.targets if isinstance(sub, ast.Assign) else
                               [sub.target] if isinstance(sub, (ast.AnnAssign, ast.AugAssign)) else [])
                    for t in targets:
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                            members.setdefault(t.attr, None)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    if isinstance(t, ast.Name):
                        members.setdefault(t.id, None)
            elif isinstance(node, ast.ClassDef):
                members.setdefault(node.name, None)
        return members

    def signature(self, module: Module, fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> dict:
        args = fn.args
        names = [a.arg for a in args.args + args.kwonlyargs]
        if method and args.args and not any(isinstance(d, ast.Name) and d.id == "staticmethod"
                                            for d in fn.decorator_list):
            names = names[1:]  # self / cls
        returns = self.resolve_expr(module, fn.returns) if fn.returns is not None else ""
        return {"params": names, "varkw": args.kwarg is not None,
                "returns": returns if self.class_def(returns) else ""}

    def to_json(self) -> dict:
        modules, classes, callables = {}, {}, {}
        for name, mod in sorted(self.modules.items()):
            modules[name] = {n: self.resolve(f"{name}.{n}") for n in sorted(mod.bindings)}
            for fname, fn in mod.functions.items():
                if public(fname):
                    callables[f"{name}.{fname}"] = self.signature(mod, fn, method=False)
            for cname in mod.classes:
                qualified = f"{name}.{cname}"
                members: set[str] = set()
                for klass in self.mro(qualified):
                    members.update(self.own_members(klass))
                classes[qualified] = sorted(members)
                for member in sorted(filter(public, members)):
                    sig = self.method_signature(qualified, member)
                    if sig is not None:
                        callables[f"{qualified}.{member}"] = sig
        return {"modules": modules, "classes": classes, "callables": callables}

    def method_signature(self, qualified: str, member: str, depth: int = 0) -> dict | None:
        """The first definition of ``member`` along the class's bases. Where it takes **kwargs and passes them on
        (``super().m(**kwargs)``, ``Base.m(self, **kwargs)``), the parameters of where they go are added."""
        order = self.mro(qualified)
        for i, klass in enumerate(order):
            fn = self.own_members(klass).get(member)
            if fn is not None:
                break
        else:
            return None
        module = self.class_def(klass)[0]
        sig = self.signature(module, fn, method=True)
        if not sig["varkw"] or depth > 10:
            return sig
        forwarded = []
        for call in ast.walk(fn):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and any(
                    k.arg is None and isinstance(k.value, ast.Name) and k.value.id == fn.args.kwarg.arg
                    for k in call.keywords)):
                continue
            owner = call.func.value
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                forwarded += [(after, call.func.attr) for after in order[i + 1:i + 2]]
            else:
                target = self.resolve_expr(module, owner)
                if self.class_def(target):
                    forwarded.append((target, call.func.attr))
        if not forwarded:
            return sig  # **kwargs kept or used in ways not followed: any keyword is accepted
        params, varkw = list(sig["params"]), False
        for target, name in forwarded:
            base = self.method_signature(target, name, depth + 1)
            if base is None:
                varkw = True  # passed outside these packages (e.g. to object or a stdlib class)
                continue
            params += [p for p in base["params"] if p not in params]
            varkw = varkw or base["varkw"]
        return {"params": params, "varkw": varkw, "returns": sig["returns"]}


def build(distro: str, ros_api: Path) -> dict:
    roots = package_roots(distro, ros_api)
    data = Api(module_files(roots)).to_json()
    where = {name: ("the installed PyPI wheel ros-rclpy" if distro == "kilted" and name == "rclpy"
                    else f"ros_api/{root.parent.name}/{name}") for name, root in roots.items()}
    return {"distro": distro, "sources": where, **data}


def render(data: dict) -> str:
    """JSON with one line per module, class and callable (small, readable diffs when a distribution changes)."""
    lines = ["{"]
    for i, (key, value) in enumerate(sorted(data.items())):
        end = "," if i < len(data) - 1 else ""
        if isinstance(value, dict) and key != "sources":
            items = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(value.items())]
            lines += [f"{json.dumps(key)}: {{", ",\n".join(items), f"}}{end}"]
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)}{end}")
    return "\n".join(lines + ["}"]) + "\n"


def default_ros_api() -> Path:
    beside = Path(__file__).resolve().parent.parent.parent / "shared" / "ros_api"
    return Path(os.environ.get("CMDR_SHARED_ROS_API", beside))


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ros-api", type=Path, default=default_ros_api(),
                        help="the ros_api folder (default: $CMDR_SHARED_ROS_API, else ../shared/ros_api)")
    parser.add_argument("--out", type=Path, default=here / "test" / "data" / "ros_api")
    parser.add_argument("--distro", choices=DISTROS, action="append", help="only these (default: all)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for distro in args.distro or DISTROS:
        data = build(distro, args.ros_api)
        (args.out / f"{distro}.json").write_text(render(data), encoding="utf-8")
        print(f"{distro}: {len(data['modules'])} modules, {len(data['classes'])} classes, "
              f"{len(data['callables'])} callables -> {args.out / (distro + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
