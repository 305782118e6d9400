"""The Kubernetes operator, importable as eft.controller (Python's stdlib owns the name `operator`).

Nothing imports this folder as `operator`. If the repository root lands on sys.path ahead of the
standard library (PYTHONPATH=.), Python would find this folder first when anything imports the stdlib
`operator`; in that case this file turns itself into the stdlib module so nothing breaks.
"""

if __name__ == "operator":  # pragma: no cover - only under PYTHONPATH=<repo root>
    import os as _os

    _path = _os.path.join(_os.path.dirname(_os.__file__), "operator.py")
    with open(_path, encoding="utf-8") as _f:
        exec(compile(_f.read(), _path, "exec"), globals())
    __file__ = _path
    del _os, _f
    __path__ = []  # noqa: F811  (a plain module, not a package)
