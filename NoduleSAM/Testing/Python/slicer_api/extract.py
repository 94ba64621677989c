"""Declarations of Slicer's API: parsing them, and harvesting them from Slicer's source.

A *declaration* is the source text that declares one API, copied verbatim: a Python ``def`` or
``class`` line (``def loadUI(path):``), a C++ class head (``class QMRML_WIDGETS_EXPORT
qMRMLTableView : public QTableView``) or member (``void setMRMLTableNode(vtkMRMLTableNode*
tableNode);`` under ``public slots:``, ``Q_PROPERTY(bool isEntered READ isEntered)``).
``declarations.json`` beside this file keeps those of the APIs NoduleSAM uses, each with the
repository, path and commit it was read from. This module turns them into signatures
(:func:`python_signature`, :func:`cpp_member`) and harvests them from real files
(:func:`harvest_python`, :func:`harvest_header`).

Run as a script it refreshes the snapshot from real files on disk::

    python extract.py --wheel                       # slicer/util.py of the installed slicer-core
    python extract.py --checkout ~/Slicer --commit v5.10.0   # every Slicer entry, from a checkout

and prints what changed (``--write`` saves it).
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import inspect
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SNAPSHOT = HERE / "declarations.json"


# -- Python ------------------------------------------------------------------------------------
class _Lenient(dict):
    """Locals for evaluating a ``def`` line out of its module: unknown names in defaults
    (``EXIT_SUCCESS``, ``qt.QMessageBox.Ok``) evaluate to a placeholder."""

    class _Any:
        def __getattr__(self, name):
            return self

        def __call__(self, *args, **kwargs):
            return self

        def __or__(self, other):
            return self

    def __missing__(self, key):
        return self._Any()


def python_signature(decl: list[str] | str) -> inspect.Signature | None:
    """The signature a Python ``def`` declaration gives (None for a ``class`` line)."""
    lines = [decl] if isinstance(decl, str) else list(decl)
    lines = [line for line in lines if not line.lstrip().startswith("@")]
    text = "\n".join(line.strip() if i == 0 else line for i, line in enumerate(lines)).rstrip()
    if text.startswith("class "):
        return None
    if not text.startswith(("def ", "async def ")) or not text.endswith(":"):
        raise ValueError(f"not a def line: {text!r}")
    namespace = _Lenient()
    exec(compile("from __future__ import annotations\n" + text + " ...", "<declaration>", "exec"),  # noqa: S102
         {"__builtins__": __builtins__}, namespace)                                  # (a def line, no body)
    function = next(value for key, value in namespace.items() if inspect.isfunction(value))
    return inspect.signature(function)


def _header_lines(lines: list[str], node) -> list[str]:
    """The verbatim lines of a def/class header (decorators excluded, up to the ``:``)."""
    start = node.lineno - 1
    end = node.body[0].lineno - 1
    header = lines[start:end] or [lines[start]]
    out = []
    for line in header:
        out.append(line.rstrip())
        if line.rstrip().endswith(":"):
            break
    return out


def _self_attributes(function) -> list[str]:
    return sorted({t.attr for node in ast.walk(function) if isinstance(node, (ast.Assign, ast.AnnAssign))
                   for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                   if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"})


def kwargs_sinks(tree: ast.Module, name: str, seen: set[str] | None = None) -> list[str]:
    """The Qt/CTK classes that a module function's ``**kwargs`` end up on: followed through
    calls within the module that pass ``**kwargs`` on, down to the pattern ``for key, value in
    kwargs.items(): if hasattr(box, key): setattr(box, key, value)`` with ``box = ctk.X(...)`` or
    ``qt.X(...)`` (what ``slicer.util.messageBox`` and ``delayDisplay`` do: keys that are not
    properties of ``X`` are dropped without a word)."""
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    seen = (seen or set()) | {name}
    function = functions.get(name)
    if function is None or function.args.kwarg is None:
        return []
    kwarg = function.args.kwarg.arg
    made = {t.id: node.value.func.attr for node in ast.walk(function) if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Attribute)
            and getattr(node.value.func.value, "id", "") in ("qt", "ctk")
            for t in node.targets if isinstance(t, ast.Name)}
    sinks = set()
    for node in ast.walk(function):
        if isinstance(node, ast.For) and ast.unparse(node.iter) == f"{kwarg}.items()":
            sinks |= {made[c.args[0].id] for c in ast.walk(node) if isinstance(c, ast.Call)
                      and getattr(c.func, "id", "") == "setattr" and c.args
                      and isinstance(c.args[0], ast.Name) and c.args[0].id in made}
        elif isinstance(node, ast.Call) and any(k.arg is None and getattr(k.value, "id", "") == kwarg
                                                for k in node.keywords):
            callee = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if callee in functions and callee not in seen:
                sinks |= set(kwargs_sinks(tree, callee, seen))
    return sorted(sinks)


def harvest_python(text: str, module: str, wanted: set[str] | None = None) -> dict[str, dict]:
    """Declarations of ``module``'s top-level functions and classes and of the classes'
    methods, keyed ``module.name`` / ``module.Class.method``. A class entry also lists the
    instance attributes its ``__init__`` sets (``attributes``); a function whose ``**kwargs``
    end up as properties of a Qt/CTK object, those classes (``kwargs_to``, see
    :func:`kwargs_sinks`). ``wanted``: keep only these."""
    tree = ast.parse(text)
    lines = text.splitlines()
    out = {}

    def keep(name):
        return wanted is None or name in wanted

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{module}.{node.name}"
            if keep(name):
                out[name] = {"decl": _header_lines(lines, node), "line": node.lineno}
                sinks = kwargs_sinks(tree, node.name)
                if sinks:
                    out[name]["kwargs_to"] = sinks
        elif isinstance(node, ast.ClassDef):
            name = f"{module}.{node.name}"
            methods = {f.name: f for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
            if keep(name):
                entry = {"decl": _header_lines(lines, node), "line": node.lineno,
                         "bases": [ast.unparse(b) for b in node.bases]}
                if "__init__" in methods:
                    entry["attributes"] = _self_attributes(methods["__init__"])
                out[name] = entry
            for method_name, method in methods.items():
                qual = f"{name}.{method_name}"
                if keep(qual):
                    out[qual] = {"decl": _header_lines(lines, method), "line": method.lineno}
    return out


# -- C++ headers ----------------------------------------------------------------------------------
CLASS_RE = re.compile(r"^\s*class\s+(?:\w+_EXPORT\s+)?(\w+)\s*(?::\s*(.*?))?\s*\{?\s*$")
PROPERTY_RE = re.compile(r"Q_PROPERTY\(\s*([\w:<>, *]+?)\s+(\w+)\s+(.*)\)")
SECTION_RE = re.compile(r"^\s*(public|protected|private)?\s*(slots|Q_SLOTS|signals|Q_SIGNALS)?\s*:\s*$")
METHOD_RE = re.compile(r"^(?P<prefix>[\w:<>,*&\s~]*?)\b(?P<name>~?\w+)\s*\((?P<params>.*)\)\s*(?P<suffix>[^;{]*)[;{]?")


def cpp_class(decl: str) -> tuple[str, list[str]]:
    """``class EXPORT Name : public A, public B`` -> (Name, [A, B])."""
    m = CLASS_RE.match(decl)
    if not m:
        raise ValueError(f"not a class head: {decl!r}")
    bases = [re.sub(r"^(public|protected|private|virtual)\s+", "",
                    re.sub(r"^(public|protected|private|virtual)\s+", "", b.strip())).strip()
             for b in (m.group(2) or "").split(",") if b.strip()]
    return m.group(1), [b.split("<")[0] for b in bases]


def _split_params(text: str) -> list[str]:
    depth, current, out = 0, "", []
    for ch in text:
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        out.append(current)
    return [p.strip() for p in out if p.strip() and p.strip() != "void"]


def _param_type(param: str) -> str:
    """``const QModelIndex &index`` -> ``QModelIndex``; ``bool checked = false`` -> ``bool``."""
    text = param.split("=")[0].strip()
    text = re.sub(r"\bconst\b", "", text).replace("&", " ").strip()
    words = text.split()
    if len(words) > 1 and not words[-1].endswith("*") and re.fullmatch(r"\w+", words[-1]):
        words = words[:-1]                           # drop the parameter's name
    return re.sub(r"\s+", "", " ".join(words)).replace("*", "*")


def cpp_member(decl: str, section: str) -> dict:
    """A member declaration (one line, as declared) under ``section`` (``public``, ``public
    slots``, ``signals``, ``property``, ``enum``) -> kind, name, parameter types (with whether
    each has a default), ``writable`` for a property, ``static``."""
    text = " ".join(decl.split())
    if text.startswith("Q_PROPERTY"):
        m = PROPERTY_RE.search(text)
        if not m:
            raise ValueError(f"cannot parse {decl!r}")
        return {"kind": "property", "name": m.group(2), "type": m.group(1).strip(),
                "writable": " WRITE " in f" {m.group(3)} "}
    if section == "enum":
        m = re.match(r"(?:enum\s+(\w+)\s*\{?)?\s*(.*)", text)
        values = [v.split("=")[0].strip() for v in m.group(2).strip("{};").split(",") if v.strip()]
        return {"kind": "enum", "name": m.group(1) or "", "values": [v for v in values if v]}
    m = METHOD_RE.match(text)
    if not m:
        raise ValueError(f"cannot parse {decl!r}")
    prefix = m.group("prefix")
    params = [(_param_type(p), "=" in p) for p in _split_params(m.group("params"))]
    params = [(t, d) for t, d in params if t != "QPrivateSignal"]
    kind = {"public slots": "slot", "public Q_SLOTS": "slot", "signals": "signal",
            "Q_SIGNALS": "signal"}.get(section, "method")
    if "Q_INVOKABLE" in prefix and kind == "method":
        kind = "invokable"
    return {"kind": kind, "name": m.group("name"), "params": params,
            "static": bool(re.search(r"\bstatic\b", prefix)), "section": section}


def harvest_header(text: str, class_name: str, wanted: set[str] | None = None) -> dict:
    """The class head and the (wanted) members of ``class_name`` in a C++ header: Q_PROPERTY
    lines, and methods, slots and signals with the section they are declared in."""
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if CLASS_RE.match(line)
                 and CLASS_RE.match(line).group(1) == class_name and not line.rstrip().endswith(";")),
                None)
    if head is None:
        raise ValueError(f"class {class_name} not found")
    decl = [lines[head].rstrip()]
    i = head + 1
    while "{" not in decl[-1] and i < len(lines) and "{" not in lines[i]:   # base list on next lines
        decl.append(lines[i].rstrip())
        i += 1
    decl[-1] = decl[-1].split("{")[0].rstrip()
    members, section, depth = [], "private", 0
    for line in lines[head + 1:]:
        stripped = line.split("//")[0].strip()
        depth += stripped.count("{") - stripped.count("}")
        if depth < 0 or stripped.startswith("};") and depth <= 0:
            break
        if not stripped or depth > 1:
            continue
        m = SECTION_RE.match(stripped)
        if m and (m.group(1) or m.group(2)):
            section = " ".join(part for part in m.groups() if part)
            continue
        if stripped.startswith("Q_PROPERTY"):
            entry = cpp_member(stripped, "property")
        elif "(" in stripped and stripped.endswith((";", ")", "override;", "const;")) \
                and section in ("public", "public slots", "public Q_SLOTS", "signals", "Q_SIGNALS"):
            try:
                entry = cpp_member(stripped, section)
            except ValueError:
                continue
        else:
            continue
        if wanted is None or entry["name"] in wanted:
            members.append({"section": entry.get("section", "property"), "decl": stripped})
    return {"decl": [line for line in decl if line.strip()], "members": members}


# -- refreshing the snapshot -------------------------------------------------------------------------
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_snapshot(path: Path = SNAPSHOT) -> dict:
    return json.loads(path.read_text())


def wheel_util_path() -> Path | None:
    """``slicer/util.py`` of the installed slicer-core wheel (Slicer's own file), if any."""
    import importlib.util

    spec = importlib.util.find_spec("slicer")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "util.py"
        if candidate.is_file():
            return candidate
    return None


def refresh_from_file(snapshot: dict, source_id: str, path: Path) -> list[str]:
    """Re-harvest every Python entry of ``source_id`` from ``path``; returns what changed."""
    source = snapshot["sources"][source_id]
    module = source["module"]
    entries = {name: e for name, e in snapshot["python"].items() if e["source"] == source_id}
    found = harvest_python(path.read_text(), module)
    changes = []
    for name, entry in entries.items():
        new = found.get(name)
        defined = re.match(r"\s*def (\w+)", entry["decl"][0])
        if new is None and defined:        # set on the wrapped class under another name (_connectGui)
            new = found.get(f"{module}.{defined.group(1)}")
        if new is None:
            changes.append(f"{name}: not in {path}")
        else:
            for key in ("decl", "kwargs_to"):
                if new.get(key) != entry.get(key):
                    changes.append(f"{name} {key}: {entry.get(key)} -> {new.get(key)}")
                    if key in new:
                        entry[key] = new[key]
                    else:
                        entry.pop(key, None)
    source["sha256"] = sha256(path)
    return changes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", action="store_true", help="refresh slicer.util from slicer-core's util.py")
    parser.add_argument("--checkout", type=Path, help="a Slicer source checkout: refresh every Slicer/Slicer entry")
    parser.add_argument("--commit", help="the checkout's commit or tag (recorded)")
    parser.add_argument("--write", action="store_true", help="save the refreshed snapshot")
    args = parser.parse_args(argv)
    snapshot = load_snapshot()
    changes = []
    if args.wheel:
        path = wheel_util_path()
        if path is None:
            parser.error("slicer-core is not installed")
        changes += refresh_from_file(snapshot, "slicer-core-util", path)
    if args.checkout:
        for source_id, source in snapshot["sources"].items():
            if source.get("repo") != "Slicer/Slicer":
                continue
            path = args.checkout / source["path"]
            if source["path"].endswith(".py"):
                if "module" in source:       # (guiConnectors' rules and __init__'s re-exports: by hand)
                    changes += refresh_from_file(snapshot, source_id, path)
            else:
                for class_name, entry in snapshot["classes"].items():
                    if entry["source"] != source_id:
                        continue
                    wanted = {cpp_member(m["decl"], m["section"])["name"] for m in entry["members"]}
                    fresh = harvest_header(path.read_text(), class_name, wanted)
                    if fresh["members"] != entry["members"] or fresh["decl"] != entry["decl"]:
                        changes.append(f"{class_name}: {entry['members']} -> {fresh['members']}")
                        entry.update(decl=fresh["decl"], members=fresh["members"])
            source["commit"] = args.commit or source.get("commit")
    print("\n".join(changes) or "no change")
    if args.write:
        SNAPSHOT.write_text(json.dumps(snapshot, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
