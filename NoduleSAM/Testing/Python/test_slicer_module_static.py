"""Static checks of the Slicer module that need neither Slicer nor Qt.

- every widget the Python code reaches through ``self.ui.<name>`` exists in the .ui file;
- every ``SlicerParameterName`` in the .ui is a parameter of ``scene.PARAMETERS`` (and the
  parameters the GUI edits all have a widget);
- the module's ``CMakeLists.txt`` lists every script and resource file, and nothing missing.
"""
from __future__ import annotations

import ast
import fnmatch
import re
import xml.etree.ElementTree as ET
from pathlib import Path

MODULE = Path(__file__).resolve().parents[2]          # NoduleSAM/
REPO = MODULE.parent
UI_FILE = MODULE / "Resources" / "UI" / "NoduleSAM.ui"
# Parameters shown in tables set by code rather than bound to an input widget.
PARAMETERS_WITHOUT_WIDGET = {"candidateTable", "measurementTable"}


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def ui_names_used_in_python() -> set[str]:
    tree = ast.parse((MODULE / "NoduleSAM.py").read_text())
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"}


def scene_parameter_names() -> set[str]:
    """``Parameter("name", ...)`` entries of the parameter table, read without importing slicer."""
    tree = ast.parse((MODULE / "NoduleSAMLib" / "scene" / "parameters.py").read_text())
    return {call.args[0].value for call in ast.walk(tree)
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Parameter"
            and call.args and isinstance(call.args[0], ast.Constant)}


def test_every_widget_used_exists_in_the_ui():
    used, present = ui_names_used_in_python(), set(ui_widgets())
    assert used, "found no self.ui.<name> in NoduleSAM.py"
    assert used <= present, f"not in {UI_FILE.name}: {sorted(used - present)}"


def test_ui_parameter_names_match_the_parameter_pack():
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = name
    parameters = scene_parameter_names()
    assert set(bound) <= parameters, f"unknown parameters in the .ui: {sorted(set(bound) - parameters)}"
    assert parameters - PARAMETERS_WITHOUT_WIDGET <= set(bound), \
        f"parameters with no widget: {sorted(parameters - PARAMETERS_WITHOUT_WIDGET - set(bound))}"


def test_ui_is_wellformed_designer_xml():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.find("class").text == "NoduleSAM"
    custom = {c.find("class").text for c in root.iter("customwidget")}
    qt_classes = {w.get("class") for w in root.iter("widget") if not w.get("class").startswith("Q")}
    assert qt_classes <= custom, f"custom widgets not declared: {sorted(qt_classes - custom)}"


def _cmake_lists(text: str) -> tuple[dict[str, list[str]], list[str]]:
    """``set(VAR items...)`` lists and ``file(GLOB_RECURSE ...)`` patterns of a CMakeLists."""
    text = re.sub(r"#[^\n]*", "", text)
    lists = {m.group(1): m.group(2).split() for m in re.finditer(r"set\((\w+)\s+([^)]*)\)", text)}
    globs = [pattern for m in re.finditer(r"file\(GLOB(?:_RECURSE)?\s+\w+\s+RELATIVE\s+\S+\s+([^)]*)\)", text)
             for pattern in m.group(1).split()]
    return lists, globs


def test_cmakelists_lists_every_script_and_resource():
    lists, globs = _cmake_lists((MODULE / "CMakeLists.txt").read_text())
    name = lists["MODULE_NAME"][0]

    def expand(items):
        return {item.replace("${MODULE_NAME}", name) for item in items if not item.startswith("${MODULE_MODEL")}

    scripts, resources = expand(lists["MODULE_PYTHON_SCRIPTS"]), expand(lists["MODULE_PYTHON_RESOURCES"])
    on_disk_scripts = {p.relative_to(MODULE).as_posix() for p in MODULE.glob("*.py")}
    on_disk_scripts |= {p.relative_to(MODULE).as_posix() for p in (MODULE / "NoduleSAMLib").rglob("*.py")
                        if "__pycache__" not in p.parts}
    assert on_disk_scripts == scripts, (f"unlisted: {sorted(on_disk_scripts - scripts)}; "
                                        f"listed but missing: {sorted(scripts - on_disk_scripts)}")
    on_disk_resources = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts}
    unlisted = {r for r in on_disk_resources - resources
                if not any(fnmatch.fnmatch(r, pattern) for pattern in globs)}
    assert not unlisted, f"resources not listed in CMakeLists.txt: {sorted(unlisted)}"
    missing = {r for r in resources if not (MODULE / r).is_file()}
    assert not missing, f"CMakeLists.txt lists missing files: {sorted(missing)}"


def test_extension_metadata():
    lists, _ = _cmake_lists((REPO / "CMakeLists.txt").read_text())
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key}\s+"[^"]+"\)', text), f"{key} is not set"
    assert re.search(r'set\(EXTENSION_CATEGORY\s+"Segmentation"\)', text)
    assert re.search(r'set\(EXTENSION_DEPENDS\s+"[^"]*PyTorch[^"]*"\)', text)
    assert "add_subdirectory(NoduleSAM)" in text


def test_module_file_is_thin_and_scene_has_no_qt():
    """Qt stays in NoduleSAM.py; the scene glue imports slicer but never qt/ctk."""
    for path in (MODULE / "NoduleSAMLib").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
        assert not imported & {"qt", "ctk", "PythonQt"}, f"{path.name} imports Qt"
    module = ast.parse((MODULE / "NoduleSAM.py").read_text())
    classes = {node.name for node in module.body if isinstance(node, ast.ClassDef)}
    assert {"NoduleSAM", "NoduleSAMWidget", "NoduleSAMTest"} <= classes


def _widget_methods() -> dict[str, ast.FunctionDef]:
    module = ast.parse((MODULE / "NoduleSAM.py").read_text())
    widget, = (node for node in module.body
               if isinstance(node, ast.ClassDef) and node.name == "NoduleSAMWidget")
    return {f.name: f for f in widget.body if isinstance(f, ast.FunctionDef)}


def _self_calls(function: ast.FunctionDef) -> set[str]:
    """``self.a.b(...)`` -> "a.b", ``self.f(...)`` -> "f" for every call in ``function``."""
    out = set()
    for call in ast.walk(function):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            parts, node = [call.func.attr], call.func.value
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id == "self":
                out.add(".".join(reversed(parts)))
    return out


def test_cleanup_stops_every_timer_and_unbinds_the_gui():
    """Slicer calls cleanup() when the module goes (application exit, module reload): a timer
    left running would call into a dead widget."""
    methods = _widget_methods()
    timers = {target.attr for node in ast.walk(methods["setup"]) if isinstance(node, ast.Assign)
              and isinstance(node.value, ast.Call) and getattr(node.value.func, "attr", "") == "QTimer"
              for target in node.targets if isinstance(target, ast.Attribute)}
    assert timers == {"_timer", "_tableTimer"}
    calls = _self_calls(methods["cleanup"])
    assert {f"{timer}.stop" for timer in timers} <= calls, calls
    assert {"_cancel.set", "setParameterNode", "removeObservers"} <= calls, calls
    unbind = [c for c in ast.walk(methods["cleanup"]) if isinstance(c, ast.Call)
              and getattr(c.func, "attr", "") == "setParameterNode"]
    assert [a.value for a in unbind[0].args] == [None]
    assert "_parameterNode.disconnectGui" in _self_calls(methods["setParameterNode"])


def test_leaving_the_module_keeps_the_job():
    """exit() unbinds the GUI but leaves the running job (and its poll timer) alone; the job
    finishes, and chains Auto-segment's Refine, on its own parameters."""
    methods = _widget_methods()
    for name in ("exit", "enter", "onSceneStartClose"):
        assigned = {t.attr for node in ast.walk(methods[name]) if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Attribute)}
        assert "_job" not in assigned, f"{name}() drops the running job"
        assert "_timer.stop" not in _self_calls(methods[name]), f"{name}() stops the job's poll"
    finish = methods["finishJob"]
    chained = [c for c in ast.walk(finish) if isinstance(c, ast.Call)
               and isinstance(c.func, ast.Name) and c.func.id == "then"]
    assert chained and ast.unparse(chained[0].args[0]) == "job.params"
    params = ast.unparse(methods["params"])
    assert "self._parameterNode is None" in params and "get_or_create" in params


def test_self_test_runs_the_parameter_pack_and_every_scenario():
    """parameterPackClass() needs Slicer's parameterNodeWrapper (Qt), which slicer-core lacks,
    so the module's self-test is where it runs: it must be called there, and every scenario of
    scenarios.py must be run by the self-test as well as by pytest."""
    module = ast.parse((MODULE / "NoduleSAM.py").read_text())
    test, = (node for node in module.body if isinstance(node, ast.ClassDef) and node.name == "NoduleSAMTest")
    methods = {f.name: f for f in test.body if isinstance(f, ast.FunctionDef)}
    assert {"test_parameter_pack", "test_scenarios"} <= _self_calls(methods["runTest"])
    pack_calls = {c.func.id for c in ast.walk(methods["test_parameter_pack"])
                  if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
    assert "parameterPackClass" in pack_calls
    called = {c.func.attr for c in ast.walk(methods["test_scenarios"]) if isinstance(c, ast.Call)
              and isinstance(c.func, ast.Attribute) and getattr(c.func.value, "id", "") == "scenarios"}
    scenario_tree = ast.parse((MODULE / "NoduleSAMLib" / "scenarios.py").read_text())
    scenario_names = {"volume_round_trip", "roi_edits", "cancel_and_errors", "cancel_midway",
                      "refine_and_edit", "save_and_reload", "click_refine_move"}
    defined = {f.name for f in scenario_tree.body if isinstance(f, ast.FunctionDef)}
    assert scenario_names <= defined
    assert scenario_names <= called, f"not in the self-test: {sorted(scenario_names - called)}"


def test_module_logic_is_a_thin_facade():
    """NoduleSAMLogic(ScriptedLoadableModuleLogic), as Slicer scripts expect; each method hands
    over to the scene package in a line or two (the headless tests test what it calls)."""
    module = ast.parse((MODULE / "NoduleSAM.py").read_text())
    logic, = (node for node in module.body if isinstance(node, ast.ClassDef) and node.name == "NoduleSAMLogic")
    assert [ast.unparse(base) for base in logic.bases] == ["ScriptedLoadableModuleLogic"]
    methods = {f.name: f for f in logic.body if isinstance(f, ast.FunctionDef)}
    assert {"autoSegment", "detect", "refine"} <= set(methods)
    assert "scene.auto_segment" in ast.unparse(methods["autoSegment"])
    for name in ("autoSegment", "detect", "refine"):
        statements = [s for s in methods[name].body if not isinstance(s, ast.Expr)]  # no docstring
        assert len(statements) == 1, f"NoduleSAMLogic.{name} should only hand over"
    assert "NoduleSAMLogic()" in ast.unparse(_widget_methods()["showDependencies"])
