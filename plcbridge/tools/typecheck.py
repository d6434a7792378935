"""`python -m plcbridge.tools.typecheck`: mypy over the whole package, as it is installed.

mypy finds modules by folder, and the repository's folders are not laid out as the package:
`inference/` is `plcbridge.inference` through pyproject.toml's package-dir (see README, "Why
`inference`, `adapters` and `simulators` are not top-level modules"). Checked in place,
every `plcbridge.adapters...` import would be unresolved and silently typed Any. So this
builds the package as the installer would, a tree of symbolic links under
`.venv/typecheck/` (nothing is copied), runs mypy on it with the settings of `[tool.mypy]`
in pyproject.toml, and prints mypy's report with the paths of the repository. The exit
status is mypy's: 0 when clean.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from plcbridge.tools.imports import ROOT, package_dirs


def link_tree(root: Path = ROOT, dest: Path | None = None) -> tuple[Path, dict[str, str]]:
    """The package as symlinks under `dest`; returns (its top folder, {tree path: repository path})."""
    dest = dest or root / ".venv" / "typecheck"
    if dest.exists():
        shutil.rmtree(dest)
    mapping: dict[str, str] = {}
    packages = package_dirs(root)
    for pkg, folder in sorted(packages.items()):
        target = dest.joinpath(*pkg.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if path.suffix == ".py":
                (target / path.name).symlink_to(path)
        for sub in folder.iterdir():
            if sub.is_dir() and (sub / "__init__.py").exists() and not (target / sub.name).exists():
                if f"{pkg}.{sub.name}" not in packages:
                    (target / sub.name).symlink_to(sub, target_is_directory=True)
        mapping[str(target.relative_to(dest))] = str(folder.relative_to(root))
    return dest / "plcbridge", mapping


def main(argv: list[str] | None = None) -> int:
    from mypy import api

    top, mapping = link_tree()
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), *(argv or []), str(top)])
    lines = []
    prefixes = (str(top.parent) + "/", os.path.relpath(top.parent) + "/")
    for line in out.splitlines(keepends=True):
        for prefix in prefixes:
            if line.startswith(prefix):
                line = line[len(prefix):]
                # The longest package first: plcbridge/inference/ before plcbridge/.
                for tree, repo in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
                    if line.startswith(tree + "/"):
                        line = repo + "/" + line[len(tree) + 1:]
                        break
                break
        lines.append(line)
    out = "".join(lines)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
