"""Find every call the Slicer module makes into Slicer, Qt, CTK and MRML, and check it.

:func:`collect` reads ``NoduleSAM.py`` (and the two calls ``install.py`` makes into Slicer) with
``ast`` and types each receiver: ``slicer.util``, ``qt.QTimer()``, ``self.ui.<name>`` (its class in
the ``.ui`` file), ``slicer.mrmlScene``, the node classes named in ``AddNewNodeByClass``, the base
classes' methods and attributes, the ``@parameterNodeWrapper`` pack, and a few names whose values
come from the module's own scene package (:data:`NAME_TYPES`). :func:`check` checks each use:

- Python APIs (``slicer.util``, ``ScriptedLoadableModule*``, ``parameterNodeWrapper``,
  ``VTKObservationMixin``) against the declarations in ``declarations.json``: the name exists, and
  the call binds to the declared signature (positional count, keyword names);
- PythonQt objects (qSlicer*/qMRML*/ctk* classes and Qt classes) against the class heads and
  members there: a method must be a slot, signal, ``Q_INVOKABLE`` or property (Qt's own classes:
  any public method, which PythonQt's generated wrappers expose), with a matching argument count;
  ``connect("sig(T)")`` needs that signal; assigning a property needs ``WRITE``;
- VTK/MRML classes against the real classes of the ``slicer-core`` wheel (``hasattr``, and the
  argument counts of the wrapped signatures in their docstrings).

A use whose receiver cannot be typed is an error too, so nothing passes unchecked.
"""
from __future__ import annotations

import ast
import builtins
import re
import unittest
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from . import extract

MODULE = Path(__file__).resolve().parents[3]                  # NoduleSAM/
MODULE_FILE = MODULE / "NoduleSAM.py"
INSTALL_FILE = MODULE / "NoduleSAMLib" / "install.py"
UI_FILE = MODULE / "Resources" / "UI" / "NoduleSAM.ui"
PARAMETERS_FILE = MODULE / "NoduleSAMLib" / "scene" / "parameters.py"

# Names whose values come from the module's own scene package, a loop or a Qt signal; the
# headless scene tests run the code that returns them.
NAME_TYPES = {
    "roi": "vtk:vtkMRMLMarkupsROINode",          # scene.add_roi, engine.add_click, scene.roi_of_table_row
    "node": "vtk:vtkMRMLSegmentationNode",       # params.outputSegmentation
    "table": "vtk:vtkMRMLTableNode",             # params.candidateTable / measurementTable
    "volumeNode": "vtk:vtkMRMLScalarVolumeNode",
    "fiducial": "vtk:vtkMRMLMarkupsFiducialNode",  # the caller of PointPositionDefinedEvent (onClickNodule's node)
    "model": "qt:QSortFilterProxyModel",         # qMRMLTableView.model(): its sortFilterProxyModel()
    "index": "qt:QModelIndex",                   # the argument of clicked(QModelIndex)
    "parameterNode": "pnw",                      # setParameterNode(self.ParameterPack(...))
    "view": "qt:qMRMLTableView",                 # onTableClicked's view: candidateTableView / measurementTableView
}
# Receivers that are the project's own code or the standard library (not Slicer's API).
NOT_SLICER = {
    "install", "scene", "scenarios", "params", "job", "summary", "logging", "threading", "queue",
    "traceback", "os", "messages", "cancel", "parameter", "annotations", "extras", "plan", "states",
    "case", "lidc", "err", "error", "PyTorchUtils", "str", "result", "pack", "edited",
}
NOT_SLICER_SELF = {"scene", "logic", "_messages", "_cancel", "_job", "_then", "ParameterPack"}
# What a call returns, for calls whose result is used as a receiver.
RETURNS = {
    ("py:slicer.util", "childWidgetVariables"): "ui",
    ("py:slicer.util", "mainWindow"): "qt:qSlicerMainWindow",
    ("qt:qMRMLTableView", "model"): "qt:QSortFilterProxyModel",
    ("qt:QSortFilterProxyModel", "mapToSource"): "qt:QModelIndex",
    ("qt:QMessageBox", "addButton"): "qt:QPushButton",
}
MODULES = {"markups": "qt:qSlicerMarkupsModule"}           # slicer.modules.<name>
MODULE_LOGICS = {"markups": "vtk:vtkSlicerMarkupsLogic"}   # its logic() (qSlicerMarkupsModule::createLogic)
SLICER_ATTRIBUTES = {                                      # the slicer package in the application
    "mrmlScene": "vtk:vtkMRMLScene", "app": "qt:qSlicerApplication", "util": "py:slicer.util",
    "modules": "modules",
}


@dataclass
class Use:
    """One use of an outside API, at ``line`` of ``file``."""
    line: int
    text: str                 # the source, for messages
    kind: str                 # python | qt | vtk | signal | unknown
    target: str               # qualified name / class
    member: str = ""
    nargs: int | None = None  # positional arguments of a call (None: not a call)
    keywords: tuple = ()
    store: bool = False       # an assignment to the attribute
    bound: bool = False       # a method called on an instance (self not in nargs)
    file: str = "NoduleSAM.py"

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


@dataclass
class _Class:
    name: str
    bases: list[str]
    methods: set[str]
    attributes: set[str] = field(default_factory=set)
    self_types: dict[str, str] = field(default_factory=dict)


def ui_classes(path: Path = UI_FILE) -> tuple[str, dict[str, str]]:
    root = ET.parse(path).getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    top = root.find("widget").get("class")
    return top, widgets


class Collector:
    def __init__(self, source: str, file: str = "NoduleSAM.py", ui: tuple[str, dict] | None = None):
        self.tree = ast.parse(source)
        self.file = file
        self.ui_root, self.ui_widgets = ui or ui_classes()
        self.uses: list[Use] = []
        self.imported: dict[str, str] = {}   # local name -> "py:<qualified>" / "pymod:<module>"
        self.cls: _Class | None = None

    # -- typing ------------------------------------------------------------------------------
    def type_of(self, node, env) -> str | None:
        if isinstance(node, ast.Name):
            if node.id == "self":
                return "self"
            if node.id in env:
                return env[node.id]
            if node.id in self.imported:
                return self.imported[node.id]
            if node.id in NAME_TYPES:
                return NAME_TYPES[node.id]
            if node.id in NOT_SLICER or hasattr(builtins, node.id):
                return "project"
            return None
        if isinstance(node, ast.Attribute):
            owner = self.type_of(node.value, env)
            name = node.attr
            if owner == "pymod:slicer":
                if name in SLICER_ATTRIBUTES:
                    return SLICER_ATTRIBUTES[name]
                if name.startswith("vtk"):
                    return f"vtkclass:{name}"
                return None
            if owner == "pymod:qt":
                return f"qtclass:{name}"
            if owner == "pymod:vtk":
                return f"vtkclass:{name}"
            if owner == "modules":
                return MODULES.get(name)
            if owner == "ui":
                return f"qt:{self.ui_widgets[name]}" if name in self.ui_widgets else None
            if owner == "self":
                if name == "ui":
                    return "ui"
                if self.cls and name in self.cls.self_types:
                    return self.cls.self_types[name]
                if name in NOT_SLICER_SELF or (self.cls and name in self.cls.methods):
                    return "project"
                if name == "parent":
                    return ("qt:qSlicerScriptedLoadableModule" if self.cls and "ScriptedLoadableModule" in self.cls.bases
                            else "qt:qSlicerScriptedLoadableModuleWidget")
                if name == "layout":
                    return "qt:QLayout"        # qSlicerScriptedLoadableModuleWidget's layout()
                if name == "_parameterNode":
                    return "pnw"
                if self.cls and name in self.cls.attributes:
                    return "project"
                return None
            if owner == "pnw" and name == "parameterNode":
                return "vtk:vtkMRMLScriptedModuleNode"
            if owner == "project":
                return "project"
            return None
        if isinstance(node, ast.Call):
            func = node.func
            callee = self.type_of(func, env) if isinstance(func, ast.Attribute) else None
            if callee and callee.startswith("qtclass:"):
                return f"qt:{callee[8:]}"          # qt.QTimer() -> a QTimer
            if isinstance(func, ast.Attribute):
                owner = self.type_of(func.value, env)
                key = (owner, func.attr)
                if key in RETURNS:
                    return RETURNS[key]
                if owner == "py:slicer.util" and func.attr == "loadUI":
                    return f"qt:{self.ui_root}"
                if owner == "vtk:vtkMRMLScene" and func.attr in ("AddNewNodeByClass", "GetFirstNodeByClass") \
                        and node.args and isinstance(node.args[0], ast.Constant):
                    return f"vtk:{node.args[0].value}"
                if owner in MODULES.values() and func.attr == "logic":
                    return MODULE_LOGICS[next(k for k, v in MODULES.items() if v == owner)]
                if owner == "self" and func.attr == "ParameterPack":
                    return "pnw"
                if owner == "project" or owner == "self":
                    return "project"
            if isinstance(func, ast.Name) and func.id in self.imported and self.imported[func.id].startswith("py:"):
                return "pyobj:" + self.imported[func.id][3:]
            return "project" if isinstance(func, ast.Name) else None
        return "project"   # literals, subscripts, comprehensions...

    def _env(self, function) -> dict[str, str]:
        """Types of the local names of ``function`` (assignments and tuple loops), in order."""
        env: dict[str, str] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                kind = self.type_of(node.value, env)
                if kind and kind != "project":
                    env[node.targets[0].id] = kind
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Tuple) \
                    and isinstance(node.iter, ast.Tuple) and node.iter.elts \
                    and isinstance(node.iter.elts[0], ast.Tuple):
                for position, target in enumerate(node.target.elts):
                    if isinstance(target, ast.Name):
                        kinds = {self.type_of(row.elts[position], env) for row in node.iter.elts}
                        if len(kinds) == 1 and None not in kinds:
                            env[target.id] = kinds.pop()
        return env

    # -- uses --------------------------------------------------------------------------------
    def add(self, node, kind, target, member="", **kw):
        self.uses.append(Use(node.lineno, ast.unparse(node)[:90], kind, target, member, file=self.file, **kw))

    def imports(self, node):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("qt", "slicer", "vtk", "ctk"):
                    self.imported[alias.asname or alias.name] = f"pymod:{alias.name}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "slicer":
            for alias in node.names:
                qual = f"{node.module}.{alias.name}"
                self.imported[alias.asname or alias.name] = f"py:{qual}"
                self.add(node, "python", qual)

    def call(self, node: ast.Call, env):
        func = node.func
        nargs = len(node.args)
        keywords = tuple(k.arg for k in node.keywords if k.arg)
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            nargs = None                      # *args/**kwargs: check the name only
        if isinstance(func, ast.Name):
            kind = self.imported.get(func.id, "")
            if kind.startswith("py:"):
                self.add(node, "python", kind[3:], nargs=nargs, keywords=keywords)
            return
        if not isinstance(func, ast.Attribute):
            return
        owner = self.type_of(func.value, env)
        m = func.attr
        if owner is None:
            self.add(node, "unknown", ast.unparse(func.value), m)
        elif owner in ("pymod:qt", "pymod:vtk", "pymod:slicer"):
            kind = self.type_of(func, env) or ""
            if kind.startswith("qtclass:"):
                self.add(node, "qt", kind[8:])        # a Qt class constructed: it must exist
            elif kind.startswith("vtkclass:"):
                self.add(node, "vtk", kind[9:])
            else:
                self.add(node, "unknown", ast.unparse(func.value), m)
        elif owner.startswith("py:"):
            self.add(node, "python", f"{owner[3:]}.{m}", nargs=nargs, keywords=keywords)
        elif owner.startswith("pyobj:"):
            self.add(node, "python", f"{owner[6:]}.{m}", nargs=nargs, keywords=keywords, bound=True)
        elif owner.startswith(("qt:", "qtclass:")):
            cls = owner.split(":", 1)[1]
            if m == "connect" and node.args and isinstance(node.args[0], ast.Constant):
                self.add(node, "signal", cls, node.args[0].value)
            else:
                self.add(node, "qt", cls, "exec" if m == "exec_" else m, nargs=nargs,
                         keywords=keywords, bound=owner.startswith("qt:"))
        elif owner.startswith(("vtk:", "vtkclass:")):
            self.add(node, "vtk", owner.split(":", 1)[1], m, nargs=nargs, bound=owner.startswith("vtk:"))
        elif owner == "pnw":
            self.add(node, "python", f"slicer.parameterNodeWrapper.<wrapped>.{m}", nargs=nargs,
                     keywords=keywords, bound=True)
        elif owner == "self" and m == "ParameterPack":    # the @parameterNodeWrapper class
            self.add(node, "python", "slicer.parameterNodeWrapper.<wrapped>.__init__", nargs=nargs,
                     keywords=keywords, bound=True)
        elif owner == "self":
            if self.cls and (m in self.cls.methods or m in self.cls.attributes or m in NOT_SLICER_SELF):
                return
            base = self._python_base_with(m)
            if base == "unittest":
                return
            if base:
                self.add(node, "python", "|".join(f"{b}.{m}" for b in base.split("|")), nargs=nargs,
                         keywords=keywords, bound=True)
            else:
                self.add(node, "unknown", "self", m)
        elif owner in ("project", "ui"):
            return
        else:
            self.add(node, "unknown", owner, m)

    def _python_base_with(self, member) -> str | None:
        """The Slicer base classes ``self.member`` may come from, ``|``-separated in method
        resolution order (the checker takes the first that has it); "unittest" for TestCase's."""
        if self.cls and "ScriptedLoadableModuleTest" in self.cls.bases and hasattr(unittest.TestCase, member):
            return "unittest"
        bases = [self.imported.get(base, "")[3:] for base in (self.cls.bases if self.cls else [])]
        return "|".join(b for b in bases if b) or None

    def attribute(self, node: ast.Attribute, env, store: bool):
        owner = self.type_of(node.value, env)
        m = node.attr
        if owner is None:
            self.add(node, "unknown", ast.unparse(node.value), m)
        elif owner.startswith(("qt:", "qtclass:")):
            self.add(node, "qt", owner.split(":", 1)[1], m, store=store, bound=owner.startswith("qt:"))
        elif owner.startswith(("vtk:", "vtkclass:")):
            self.add(node, "vtk", owner.split(":", 1)[1], m, store=store)
        elif owner.startswith("py:"):
            self.add(node, "python", f"{owner[3:]}.{m}", store=store)
        elif owner == "pymod:slicer":
            if m in ("app", "mrmlScene", "modules"):
                self.add(node, "python", f"slicer.{m}", store=store)   # set by the application
            elif m.startswith("vtk"):
                self.add(node, "vtk", m)                              # a class of slicer-core
            else:
                self.add(node, "unknown", "slicer", m)
        elif owner == "pnw":
            self.add(node, "python", f"slicer.parameterNodeWrapper.<wrapped>.{m}", store=store, bound=True)
        elif owner == "self" and self.cls and m not in self.cls.attributes and m not in self.cls.methods \
                and m not in self.cls.self_types and m not in NOT_SLICER_SELF and m != "ui":
            base = self._python_base_with(m)
            if base and base != "unittest":
                self.add(node, "python", "|".join(f"{b}.{m}" for b in base.split("|")), store=store, bound=True)

    def function(self, function):
        env = self._env(function)
        receivers = {id(n.func) for n in ast.walk(function) if isinstance(n, ast.Call)}
        values = {id(n.value) for n in ast.walk(function) if isinstance(n, ast.Attribute)}
        for node in ast.walk(function):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.imports(node)
        for node in ast.walk(function):
            if isinstance(node, ast.Call):
                self.call(node, env)
            elif isinstance(node, ast.Attribute) and id(node) not in receivers:
                if id(node) in values and self.type_of(node.value, env) == "self":
                    self.attribute(node, env, False)   # an inherited self.parent / self.layout
                    continue
                if id(node) in values and self.type_of(node.value, env) == "pymod:slicer" \
                        and node.attr in ("app", "mrmlScene", "modules"):
                    self.add(node, "python", f"slicer.{node.attr}")   # set by the application
                    continue
                if id(node) in values and self.type_of(node.value, env) in ("pymod:slicer", "pymod:qt", "pymod:vtk",
                                                                             "ui", "modules"):
                    continue                  # a receiver: checked through what is called on it
                if id(node) in values and self.type_of(node, env) not in (None, "project"):
                    continue
                self.attribute(node, env, isinstance(node.ctx, ast.Store))

    def run(self) -> list[Use]:
        for node in self.tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.imports(node)
        for node in self.tree.body:
            if isinstance(node, ast.ClassDef):
                methods = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
                self.cls = _Class(node.name, [ast.unparse(b) for b in node.bases], methods)
                for f in ast.walk(node):
                    if isinstance(f, ast.Assign):
                        for t in f.targets:
                            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                                kind = self.type_of(f.value, {})
                                if kind and kind.startswith(("qt:", "vtk:")):
                                    self.cls.self_types[t.attr] = kind
                                else:
                                    self.cls.attributes.add(t.attr)
                for f in node.body:
                    if isinstance(f, ast.FunctionDef):
                        self.function(f)
                self.cls = None
            elif isinstance(node, ast.FunctionDef):
                self.function(node)
        return self.uses


def collect_install(source: str) -> list[Use]:
    """The calls ``install.install_into_slicer`` makes on what the widget hands it:
    ``pip_install`` (``slicer.util.pip_install``) and ``torch_logic`` (``PyTorchUtilsLogic()``)."""
    uses = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        keywords = tuple(k.arg for k in node.keywords if k.arg)
        text = ast.unparse(node)[:90]
        if isinstance(node.func, ast.Name) and node.func.id == "pip_install":
            uses.append(Use(node.lineno, text, "python", "slicer.util.pip_install", nargs=len(node.args),
                            keywords=keywords, file="NoduleSAMLib/install.py"))
        elif isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "torch_logic":
            uses.append(Use(node.lineno, text, "python", f"PyTorchUtils.PyTorchUtilsLogic.{node.func.attr}",
                            nargs=len(node.args), keywords=keywords, bound=True, file="NoduleSAMLib/install.py"))
    return uses


def collect() -> list[Use]:
    uses = Collector(MODULE_FILE.read_text()).run()
    return uses + collect_install(INSTALL_FILE.read_text())


# -- checking ----------------------------------------------------------------------------------
class Checker:
    def __init__(self, snapshot: dict | None = None):
        self.snapshot = snapshot or extract.load_snapshot()
        self.python = self.snapshot["python"]
        self.classes = self.snapshot["classes"]

    # Python
    def check_python(self, use: Use) -> str | None:
        if "|" in use.target:                    # self.<member>: from one of several base classes
            names = use.target.split("|")
            for name in names:
                if name in self.python or self._attribute_of(name):
                    return self.check_python(Use(use.line, use.text, "python", name, nargs=use.nargs,
                                                 keywords=use.keywords, bound=use.bound, store=use.store))
            return f"none of {names} is in Slicer's API"
        name = use.target if not use.member else f"{use.target}.{use.member}"
        entry = self.python.get(name)
        if entry is None:
            owner, _, attribute = name.rpartition(".")
            owner_entry = self.python.get(owner)
            if owner_entry is not None and attribute in owner_entry.get("attributes", []):
                return None                 # an instance attribute its __init__ sets
            if owner_entry is not None and owner_entry["decl"][0].lstrip().startswith("class "):
                for base in owner_entry.get("bases", []):   # inherited from a Slicer base class
                    qual = f"{owner.rpartition('.')[0]}.{base}"
                    if qual in self.python:
                        return self.check_python(Use(use.line, use.text, "python", f"{qual}.{attribute}",
                                                     nargs=use.nargs, keywords=use.keywords, bound=use.bound))
            return f"{name} is not in Slicer's API"
        if use.nargs is None and not use.keywords:
            return None
        decl = entry["decl"]
        if decl[0].lstrip().startswith("class "):
            init = self.python.get(f"{name}.__init__")
            if init is None:
                return None if use.nargs == 0 and not use.keywords else f"{name}() has no __init__ in the snapshot"
            decl, bound = init["decl"], True
        else:
            bound = use.bound
        signature = extract.python_signature(decl)
        parameters = list(signature.parameters.values())
        if bound and parameters:
            parameters = parameters[1:]
        signature = signature.replace(parameters=parameters)
        try:
            signature.bind(*[None] * (use.nargs or 0), **{k: None for k in use.keywords})
        except TypeError as err:
            return f"{name}{signature} does not take this call ({err})"
        extra = [k for k in use.keywords if k not in signature.parameters]
        sinks = entry.get("kwargs_to", [])
        for keyword in extra if sinks else []:
            owners = [cls for sink in sinks for cls, _, member in self._members(sink)[0]
                      if member["kind"] == "property" and member["name"] == keyword and member["writable"]]
            if not owners:
                return (f"{name} hands {keyword}= to {' / '.join(sinks)}, which has no such property, "
                        "so Slicer drops it without a word")
        return None

    def _attribute_of(self, name: str) -> bool:
        owner, _, attribute = name.rpartition(".")
        return attribute in self.python.get(owner, {}).get("attributes", [])

    # PythonQt classes
    def _members(self, cls: str, seen=None):
        """(class, member dict) for ``cls`` and its bases in the snapshot; and the bases missing."""
        seen = seen or []
        entry = self.classes.get(cls)
        if entry is None:
            return [], [cls]
        seen.append(cls)
        _, bases = extract.cpp_class(" ".join(line.strip() for line in entry["decl"]
                                                 if not line.lstrip().startswith("#")))
        found = [(cls, entry.get("exposes", "moc"), extract.cpp_member(m["decl"], m["section"]))
                 for m in entry["members"]]
        missing = []
        for base in bases:
            if base not in seen:
                more, lost = self._members(base, seen)
                found += more
                missing += lost
        return found, missing

    def check_qt(self, use: Use) -> str | None:
        members, missing = self._members(use.target)
        if use.target not in self.classes:
            return f"class {use.target} is not in the snapshot"
        if not use.member:
            return None                          # the class itself (constructed)
        if use.kind == "signal":
            m = re.fullmatch(r"(\w+)\((.*)\)", use.member.replace(" ", ""))
            name, types = m.group(1), [t for t in m.group(2).split(",") if t]
            for _, _, member in members:
                if member["kind"] == "signal" and member["name"] == name:
                    declared = [t for t, _ in member["params"]]
                    required = [t for t, has_default in member["params"] if not has_default]
                    if types == declared[:len(types)] and len(types) >= len(required):
                        return None
            return f"{use.target} has no signal {use.member}" + (f" (bases not in the snapshot: {missing})" if missing else "")
        candidates = [(cls, exposes, member) for cls, exposes, member in members
                      if member["name"] == use.member or use.member in member.get("values", [])]
        if not candidates:
            return f"{use.target}.{use.member} is not in Slicer/Qt's API" + (
                f" (bases not in the snapshot: {missing})" if missing else "")
        reasons = []
        for cls, exposes, member in candidates:
            kind = member["kind"]
            if kind == "enum":
                return None
            if kind == "property":
                if use.nargs is not None:
                    reasons.append(f"{cls}.{use.member} is a property, not a method")
                elif use.store and not member["writable"]:
                    reasons.append(f"{cls}.{use.member} is a read-only property")
                else:
                    return None
                continue
            if kind == "method" and exposes != "all":
                reasons.append(f"{cls}.{use.member} is neither a slot, a signal nor Q_INVOKABLE, "
                               "so PythonQt does not expose it")
                continue
            if use.nargs is None:
                if use.store:
                    reasons.append(f"{cls}.{use.member} is a method, not a property")
                    continue
                return None
            required = sum(1 for _, d in member["params"] if not d)
            if required <= use.nargs <= len(member["params"]):
                return None
            reasons.append(f"{cls}.{use.member} takes {required}..{len(member['params'])} arguments, "
                           f"not {use.nargs}")
        return "; ".join(reasons)

    # VTK / MRML (live, from the slicer-core wheel)
    @staticmethod
    def vtk_class(name: str):
        """A class of the slicer-core wheel, or of VTK (vtkCommand...) without importing all of VTK."""
        import importlib

        import slicer

        if hasattr(slicer, name):
            return getattr(slicer, name)
        for module in ("vtkmodules.vtkCommonCore", "vtkmodules.vtkCommonDataModel", "vtkmodules.vtkCommonMath", "vtk"):
            found = getattr(importlib.import_module(module), name, None)
            if found is not None:
                return found
        return None

    @staticmethod
    def vtk_arities(doc: str, name: str) -> list[tuple[int, int]]:
        """(required, total) parameter counts of each wrapped overload of ``name``."""
        out = []
        text = " ".join(doc.split())
        for m in re.finditer(rf"(?<![\w.]){re.escape(name)}\(self(?P<params>[^)]*)\)", text):
            params = extract._split_params(m.group("params").lstrip(", ")) if m.group("params").strip(", ") else []
            out.append((sum(1 for p in params if "=" not in p), len(params)))
        return out

    def check_vtk(self, use: Use) -> str | None:
        cls = self.vtk_class(use.target)
        if cls is None:
            return f"{use.target} is not a class of slicer-core or vtk"
        if not use.member:
            return None
        if not hasattr(cls, use.member):
            return f"{use.target}.{use.member} does not exist in slicer-core's {use.target}"
        if use.nargs is None:
            return None
        arities = self.vtk_arities(getattr(cls, use.member).__doc__ or "", use.member)
        if not arities:
            return None if not use.bound else f"{use.target}.{use.member}: no signature in its docstring"
        if any(required <= use.nargs <= total for required, total in arities):
            return None
        return f"{use.target}.{use.member} takes {arities} (required, all) arguments, not {use.nargs}"

    def problem(self, use: Use) -> str | None:
        if use.kind == "unknown":
            return f"cannot tell what {use.target}.{use.member} is (add its type to check.NAME_TYPES)"
        if use.kind == "python":
            return self.check_python(use)
        if use.kind in ("qt", "signal"):
            return self.check_qt(use)
        if use.kind == "vtk":
            return self.check_vtk(use)
        return f"unknown kind {use.kind}"

    def check(self, uses: list[Use]) -> list[str]:
        return [f"{use.where()}: {problem}" for use in uses if (problem := self.problem(use))]


# -- .ui bindings against the parameterNodeWrapper GUI connectors --------------------------------
def parameter_kinds(path: Path = PARAMETERS_FILE) -> dict[str, dict]:
    """``Parameter(name, kind, ..., choices=, minimum=)`` entries of the parameter table."""
    out = {}
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Parameter" and len(call.args) >= 2:
            kind = call.args[1]
            keywords = {k.arg for k in call.keywords}
            out[call.args[0].value] = {
                "kind": kind.value if isinstance(kind, ast.Constant) else kind.id,
                "annotations": (["Choice"] if "choices" in keywords else [])
                + (["WithinRange"] if "minimum" in keywords and "choices" not in keywords else [])}
    return out


def connector_rules(snapshot: dict) -> list[dict]:
    """What each GUI connector of guiConnectors.py represents, parsed from its ``canRepresent``
    line (and the annotation its ``create`` requires)."""
    rules = []
    for entry in snapshot["gui_connectors"]:
        text = " ".join(entry["decl"])
        widgets = re.findall(r"(?:qt|ctk|slicer)\.(\w+)", text.split("canRepresent")[-1].split("raise")[0])
        m = re.search(r"unannotatedType\(datatype\)\s*(?:==|in)\s*(\([^)]*\)|\w+)", text)
        types = [t.strip() for t in m.group(1).strip("()").split(",") if t.strip()] if m else []
        if "isNodeOrUnionOfNodes(datatype)" in text:
            types = ["node"]
        requires = re.findall(r"requires the (\w+) annotation", text)
        rules.append({"name": entry["connector"], "widgets": widgets, "types": types, "requires": requires})
    return rules


def check_ui_bindings(snapshot: dict, ui_path: Path = UI_FILE, parameters_path: Path = PARAMETERS_FILE) -> list[str]:
    """Each ``SlicerParameterName`` widget of the .ui must have a GUI connector for its
    parameter's type (``connectGui`` raises on the first that has none)."""
    kinds = parameter_kinds(parameters_path)
    rules = connector_rules(snapshot)
    problems = []
    for widget in ET.parse(ui_path).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") != "SlicerParameterName":
                continue
            name = prop.find("string").text
            parameter = kinds[name]
            kind = parameter["kind"]
            kind = "node" if kind.startswith("vtkMRML") else kind
            fits = [r for r in rules if widget.get("class") in r["widgets"] and kind in r["types"]]
            if not fits:
                problems.append(f"{widget.get('name')} ({widget.get('class')}) cannot show the {kind} parameter {name}: "
                                "no parameterNodeWrapper GUI connector takes that pair")
            elif not any(set(r["requires"]) <= set(parameter["annotations"]) for r in fits):
                problems.append(f"{widget.get('name')} ({widget.get('class')}) needs {fits[0]['requires']} "
                                f"on parameter {name}")
    return problems
