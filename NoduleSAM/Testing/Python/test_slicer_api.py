"""The Slicer module's calls into Slicer, checked against Slicer's real API without Slicer.

There is no Slicer application here, so the widget code of ``NoduleSAM.py`` cannot run. These
tests read it with ``ast`` (``slicer_api.check``) and check every call it makes into Slicer, CTK,
Qt and MRML:

- Python APIs (``slicer.util``, ``ScriptedLoadableModule*``, ``parameterNodeWrapper``) and the C++
  classes PythonQt exposes (qSlicer*, qMRML*, ctk*, Qt) against ``slicer_api/declarations.json``:
  declarations copied verbatim from Slicer's, CTK's and Qt's source files (each with its
  repository, path and commit) and, for ``slicer.util``, harvested from the ``slicer/util.py``
  that the ``slicer-core`` wheel ships;
- vtkMRML*/vtkSlicer* calls against the real classes of the ``slicer-core`` wheel.

The last tests feed deliberately wrong calls to the same checker and require each to be reported
with its line, so a passing run means something.
"""
from __future__ import annotations

import ast
import copy
import textwrap

import pytest
from slicer_api import check, extract

SNAPSHOT = extract.load_snapshot()


def _slicer_core():
    return pytest.importorskip("slicer", reason="slicer-core is not installed (pip install -e '.[test]')")


# -- the module as it is ----------------------------------------------------------------------------
def test_every_slicer_call_of_the_module_is_in_slicers_api():
    _slicer_core()
    uses = check.collect()
    kinds = {use.kind for use in uses}
    assert {"python", "qt", "signal", "vtk"} <= kinds, kinds
    assert len(uses) > 150, f"only {len(uses)} uses found: the collector lost track of the module"
    problems = check.Checker(SNAPSHOT).check(uses)
    assert not problems, "calls not in Slicer's API:\n" + "\n".join(problems)


def test_every_ui_binding_has_a_parameter_node_gui_connector():
    """connectGui raises on the first .ui widget whose (class, parameter type, annotations) no
    GUI connector of parameterNodeWrapper/guiConnectors.py takes."""
    assert check.check_ui_bindings(SNAPSHOT) == []
    kinds = check.parameter_kinds()
    assert {"refiner", "device", "sensitivity", "encoder"} <= {n for n, p in kinds.items() if "Choice" in p["annotations"]}


def test_methods_slicer_calls_on_the_widget_are_slicer_hooks():
    """Slicer calls setup() and cleanup() (ScriptedLoadableModuleWidget) and enter()/exit()
    (qSlicerScriptedLoadableModuleWidget forwards them to the Python widget): the widget's
    overrides must carry exactly those names, and the self-test runTest()."""
    module = ast.parse(check.MODULE_FILE.read_text())
    classes = {c.name: {f.name for f in c.body if isinstance(f, ast.FunctionDef)}
               for c in module.body if isinstance(c, ast.ClassDef)}
    widget_base = "slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget"
    for hook in ("setup", "cleanup"):
        assert hook in classes["NoduleSAMWidget"] and f"{widget_base}.{hook}" in SNAPSHOT["python"]
    scripted_widget = {extract.cpp_member(m["decl"], m["section"])["name"]
                       for m in SNAPSHOT["classes"]["qSlicerScriptedLoadableModuleWidget"]["members"]}
    assert {"enter", "exit"} <= classes["NoduleSAMWidget"] and {"enter", "exit"} <= scripted_widget
    assert "runTest" in classes["NoduleSAMTest"]
    assert "slicer.ScriptedLoadableModule.ScriptedLoadableModuleTest.runTest" in SNAPSHOT["python"]


def test_parameter_node_classes_are_slicer_core_classes():
    """parameterPackClass() turns each node parameter's class name into ``getattr(slicer, name)``."""
    slicer = _slicer_core()
    nodes = [p["kind"] for p in check.parameter_kinds().values() if p["kind"].startswith("vtkMRML")]
    assert nodes
    for name in nodes:
        assert issubclass(getattr(slicer, name), slicer.vtkMRMLNode), name


# -- the snapshot -----------------------------------------------------------------------------------
def test_snapshot_entries_parse_and_name_their_source():
    sources = SNAPSHOT["sources"]
    for source in sources.values():
        assert source["repo"] and source["path"]
        assert source.get("commit") or source.get("sha256"), source
    for name, entry in SNAPSHOT["python"].items():
        assert entry["source"] in sources, name
        decl = entry["decl"]
        if entry.get("kind") == "package":
            assert entry["attributes"], name
        elif decl[0].lstrip().startswith("class "):
            ast.parse(decl[0].strip() + " ...")
        else:
            assert extract.python_signature(decl) is not None, name
    for name, entry in SNAPSHOT["classes"].items():
        assert entry["source"] in sources, name
        head = " ".join(line.strip() for line in entry["decl"] if not line.lstrip().startswith("#"))
        assert extract.cpp_class(head)[0] == name
        for member in entry["members"]:
            extract.cpp_member(member["decl"], member["section"])
    for entry in SNAPSHOT["gui_connectors"]:
        assert entry["source"] in sources


def test_slicer_util_entries_match_the_wheels_own_file():
    """The slicer.util declarations are those of slicer-core's slicer/util.py (Slicer's file):
    harvesting them again from the installed file gives the same lines."""
    _slicer_core()
    path = extract.wheel_util_path()
    assert path is not None
    wanted = {n for n, e in SNAPSHOT["python"].items() if e["source"] == "slicer-core-util"}
    harvested = extract.harvest_python(path.read_text(), "slicer.util", wanted)
    assert set(harvested) == wanted
    for name in wanted:
        assert harvested[name]["decl"] == SNAPSHOT["python"][name]["decl"], name


# -- the extractor ----------------------------------------------------------------------------------
def test_extract_parses_declarations():
    signature = extract.python_signature("def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):")
    signature.bind("text", windowTitle="t", detailedText="d")
    with pytest.raises(TypeError):
        extract.python_signature("def saveNode(node, filename, properties={}):").bind("node")
    assert extract.cpp_class("class CTK_WIDGETS_EXPORT ctkCollapsibleButton : public QAbstractButton") == (
        "ctkCollapsibleButton", ["QAbstractButton"])
    assert extract.cpp_class("class Q_WIDGETS_EXPORT QWidget : public QObject, public QPaintDevice")[1] == [
        "QObject", "QPaintDevice"]
    clicked = extract.cpp_member("void clicked(bool checked = false);", "Q_SIGNALS")
    assert (clicked["kind"], clicked["params"]) == ("signal", [("bool", True)])
    index = extract.cpp_member("void clicked(const QModelIndex &index);", "Q_SIGNALS")
    assert index["params"] == [("QModelIndex", False)]
    assert extract.cpp_member("void timeout(QPrivateSignal);", "Q_SIGNALS")["params"] == []
    entered = extract.cpp_member("Q_PROPERTY(bool isEntered READ isEntered);", "property")
    assert (entered["name"], entered["writable"]) == ("isEntered", False)
    logic = extract.cpp_member("Q_INVOKABLE vtkMRMLAbstractLogic* logic();", "public")
    assert (logic["kind"], logic["name"], logic["params"]) == ("invokable", "logic", [])
    static = extract.cpp_member(SNAPSHOT["classes"]["QFileDialog"]["members"][0]["decl"], "public")
    assert static["static"] and len(static["params"]) == 6 and all(d for _, d in static["params"])


def test_extract_follows_kwargs_to_the_message_box():
    """slicer.util's *Display functions pass **kwargs on to messageBox/delayDisplay, which set
    only those that are properties of the ctkMessageBox / QDialog they make."""
    _slicer_core()
    tree = ast.parse(extract.wheel_util_path().read_text())
    assert extract.kwargs_sinks(tree, "errorDisplay") == ["QDialog", "ctkMessageBox"]
    assert extract.kwargs_sinks(tree, "loadUI") == []
    toy = ast.parse(textwrap.dedent("""\
        def show(text, **kwargs):
            box = qt.QLabel(text)
            for key, value in kwargs.items():
                if hasattr(box, key):
                    setattr(box, key, value)
        def say(text, **kwargs):
            show(text, **kwargs)
        """))
    assert extract.kwargs_sinks(toy, "say") == ["QLabel"]


def test_extract_harvests_a_header_by_section():
    """harvest_header (for a Slicer checkout) finds each member under the section it is in."""
    header = textwrap.dedent("""\
        class QMRML_WIDGETS_EXPORT qMRMLTableView : public QTableView
        {
          Q_OBJECT
          Q_PROPERTY(bool transposed READ transposed WRITE setTransposed)
        public:
          qMRMLTableView(QWidget* parent = nullptr);
          Q_INVOKABLE vtkMRMLTableNode* mrmlTableNode() const;
          bool transposed() const;
        public slots:
          void setMRMLTableNode(vtkMRMLTableNode* tableNode);
        signals:
          void selectionChanged();
        protected:
          void keyPressEvent(QKeyEvent* event) override;
        };
        """)
    found = extract.harvest_header(header, "qMRMLTableView")
    sections = {extract.cpp_member(m["decl"], m["section"])["name"]: m["section"] for m in found["members"]}
    assert sections == {"transposed": "public", "qMRMLTableView": "public", "mrmlTableNode": "public",
                        "setMRMLTableNode": "public slots", "selectionChanged": "signals"}
    assert "keyPressEvent" not in sections
    assert found["decl"] == ["class QMRML_WIDGETS_EXPORT qMRMLTableView : public QTableView"]


def test_refreshing_from_a_checkout_round_trips(tmp_path, capsys):
    """``extract.py --checkout`` re-reads every Slicer/Slicer entry from the files of a checkout:
    on a tree holding exactly the recorded declarations it changes nothing."""
    for source_id, source in SNAPSHOT["sources"].items():
        if source["repo"] != "Slicer/Slicer" or source["path"].endswith("__init__.py"):
            continue
        path = tmp_path / source["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        if path.suffix == ".py":
            for entry in (e for e in SNAPSHOT["python"].values() if e["source"] == source_id):
                decl = entry["decl"]
                indent = len(decl[0]) - len(decl[0].lstrip())
                lines += decl + [" " * (indent + 4) + "pass"]
        else:
            for entry in SNAPSHOT["classes"].values():
                if entry["source"] == source_id:
                    lines += entry["decl"] + ["{", "  Q_OBJECT"]
                    for member in entry["members"]:
                        if member["section"] != "property":
                            lines.append(f"{member['section']}:")
                        lines.append("  " + member["decl"])
                    lines.append("};")
        path.write_text("\n".join(lines) + "\n")
    assert extract.main(["--checkout", str(tmp_path), "--commit", "test"]) == 0
    assert capsys.readouterr().out.strip() == "no change"


# -- wrong calls are reported -------------------------------------------------------------------------
TEMPLATE = """\
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin


class W(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NoduleSAM.ui"))
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        markupsLogic = slicer.modules.markups.logic()
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        LINE
"""
LINE = TEMPLATE.splitlines().index("        LINE") + 1


def problems_of(line: str, snapshot=None) -> list[str]:
    source = TEMPLATE.replace("LINE", line)
    uses = check.Collector(source, file="W.py").run()
    return check.Checker(snapshot or SNAPSHOT).check(uses)


@pytest.mark.parametrize("wrong, right, says", [
    ('slicer.util.loadUi("x.ui")', 'slicer.util.loadUI("x.ui")', "slicer.util.loadUi is not in Slicer's API"),
    ('slicer.util.errorDisplay("x", windowTittle="y")', 'slicer.util.errorDisplay("x", windowTitle="y")',
     "hands windowTittle= to QDialog / ctkMessageBox, which has no such property"),
    ('slicer.util.errorDisplay("x", detailText="y")', 'slicer.util.errorDisplay("x", detailedText="y")', "drops it"),
    ("slicer.util.confirmOkCancelDisplay()", 'slicer.util.confirmOkCancelDisplay("Sure?")', "does not take"),
    ("slicer.util.saveNode(node)", 'slicer.util.saveNode(node, "a.mrml")', "does not take"),
    ('self.addObserver(node)', 'self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.setup)', "does not take"),
    ("self.ui.progressBar.setRange(0)", "self.ui.progressBar.setRange(0, 1)", "takes 2..2 arguments, not 1"),
    ('self.ui.detectButton.connect("clicked(int)", self.setup)', 'self.ui.detectButton.connect("clicked()", self.setup)',
     "has no signal clicked(int)"),
    ('self.ui.candidateTableView.connect("clickedTwice(QModelIndex)", self.setup)',
     'self.ui.candidateTableView.connect("clicked(QModelIndex)", self.setup)', "has no signal clickedTwice(QModelIndex)"),
    ('self.ui.statusLabel.txt = "x"', 'self.ui.statusLabel.text = "x"', "QLabel.txt is not in"),
    ("self.ui.candidateTableView.setMRMLTableNod(node)", "self.ui.candidateTableView.setMRMLTableNode(node)",
     "setMRMLTableNod is not in"),
    ("self.parent.isEntered = True", "entered = self.parent.isEntered", "read-only property"),
    ("self.ui.inputsCollapsibleButton.enable = False", "self.ui.inputsCollapsibleButton.enabled = False", "enable is not in"),
    ("qt.QMessageBox.AcceptRoll", "qt.QMessageBox.AcceptRole", "AcceptRoll is not in"),
    ("self.ui.progressBar.setValue = 3", "self.ui.progressBar.setValue(3)", "is a method, not a property"),
    ('slicer.mrmlScene.AddNewNodeByClas("vtkMRMLScalarVolumeNode")',
     'slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")', "AddNewNodeByClas does not exist"),
    ("markupsLogic.StartPlaceMode()", "markupsLogic.StartPlaceMode(False)", "StartPlaceMode takes"),
    ("node.GetNthControlPointPositionWorld(0, [0, 0, 0], 1)", "node.GetNthControlPointPositionWorld(0, [0, 0, 0])",
     "GetNthControlPointPositionWorld takes"),
    ("slicer.vtkMRMLMarkupsNode.PointMovedEvent", "slicer.vtkMRMLMarkupsNode.PointModifiedEvent", "PointMovedEvent does not exist"),
    ("slicer.modules.markups.logik()", "slicer.modules.markups.logic()", "logik is not in"),
    ("slicer.modules.markup.logic()", "slicer.modules.markups.logic()", "cannot tell what slicer.modules.markup.logic is"),
    ("slicer.mrmlscene.Clear(0)", "slicer.mrmlScene.Clear(0)", "cannot tell what slicer.mrmlscene.Clear is"),
    ("slicer.applicationLogic.Modified()", "slicer.app.processEvents()", "cannot tell"),
    ("self.resourcePaths('x')", "self.resourcePath('x')", "is in Slicer's API"),
    ("mystery.frobnicate()", "self.setup()", "cannot tell what mystery.frobnicate is"),
])
def test_a_wrong_call_is_reported_with_its_line(wrong, right, says):
    _slicer_core()
    problems = problems_of(wrong)
    assert problems, f"{wrong!r} passed unreported"
    assert any(f"W.py:{LINE}: " in p and says in p for p in problems), problems
    assert not problems_of(right), problems_of(right)


def test_a_method_pythonqt_does_not_expose_is_reported():
    """A plain public C++ method of a Slicer (moc) class is not callable from Python: here
    qSlicerApplication::mainWindow(), declared without Q_INVOKABLE (qSlicerApplication.h)."""
    snapshot = copy.deepcopy(SNAPSHOT)
    snapshot["classes"]["qSlicerApplication"]["members"].append(
        {"section": "public", "decl": "QMainWindow* mainWindow()const;"})
    problems = problems_of("slicer.app.mainWindow()", snapshot)
    assert any("PythonQt does not expose it" in p for p in problems), problems
    assert not problems_of("slicer.app.processEvents()", snapshot)


def test_the_older_pytorch_extension_would_be_reported():
    """install.py passes torchvisionVersionRequirement to PyTorchUtilsLogic.installTorch; the
    older SlicerPyTorch version (067a0e9d) has no such keyword, and the check says so."""
    snapshot = copy.deepcopy(SNAPSHOT)
    snapshot["python"]["PyTorchUtils.PyTorchUtilsLogic.installTorch"]["decl"] = [
        "  def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):"]
    uses = check.collect_install(check.INSTALL_FILE.read_text())
    assert {u.target for u in uses} == {"slicer.util.pip_install", "PyTorchUtils.PyTorchUtilsLogic.installTorch"}
    problems = check.Checker(snapshot).check(uses)
    assert len(problems) == 1 and "torchvisionVersionRequirement" in problems[0], problems
    assert not check.Checker(SNAPSHOT).check(uses)


def test_a_ui_binding_without_a_connector_is_reported(tmp_path):
    """A QComboBox bound to a str parameter without choices, and a QSpinBox bound to a float,
    have no GUI connector: connectGui would raise in Slicer."""
    ui = tmp_path / "W.ui"
    ui.write_text(textwrap.dedent("""\
        <ui version="4.0"><class>W</class><widget class="qMRMLWidget" name="W">
         <widget class="QComboBox" name="deviceComboBox">
          <property name="SlicerParameterName"><string>device</string></property></widget>
         <widget class="QSpinBox" name="expansionSpinBox">
          <property name="SlicerParameterName"><string>expansion</string></property></widget>
         <widget class="QLineEdit" name="detectorLineEdit">
          <property name="SlicerParameterName"><string>detector</string></property></widget>
        </widget></ui>"""))
    parameters = tmp_path / "parameters.py"
    parameters.write_text(textwrap.dedent("""\
        PARAMETERS = (
            Parameter("device", str, "auto"),
            Parameter("expansion", float, 0.1, minimum=0.0, maximum=1.0),
            Parameter("detector", str, "nodule-detector"),
        )"""))
    problems = check.check_ui_bindings(SNAPSHOT, ui, parameters)
    assert len(problems) == 2, problems
    assert "deviceComboBox (QComboBox) needs ['Choice']" in problems[0]
    assert "expansionSpinBox (QSpinBox) cannot show the float parameter expansion" in problems[1]
    parameters.write_text(parameters.read_text().replace('"auto")', '"auto", choices=("auto", "cpu"))')
                          .replace("float, 0.1", "int, 1"))
    assert check.check_ui_bindings(SNAPSHOT, ui, parameters) == []
