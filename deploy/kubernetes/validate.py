#!/usr/bin/env python3
"""Validates the Kubernetes manifests in deploy/kubernetes/ against the vendored strict JSON
schemas (deploy/kubernetes/schemas/), offline. Prints one line per document and a closing
"N passed, N failed" line; exits 1 on any failure.

    python3 deploy/kubernetes/validate.py [--schemas DIR] [FILE ...]
"""
import argparse
import json
import pathlib
import sys

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

HERE = pathlib.Path(__file__).resolve().parent


def schema_file(doc):
    kind = doc.get("kind", "").lower()
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    group = group.split(".")[0]
    return f"{kind}-{group}-{version}.json" if group else f"{kind}-{version}.json"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemas", default=HERE / "schemas" / "v1.33.0-strict", type=pathlib.Path)
    ap.add_argument("files", nargs="*", type=pathlib.Path)
    args = ap.parse_args()
    files = args.files or sorted(
        p for p in HERE.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    defs = json.loads((args.schemas / "_definitions.json").read_text())
    registry = Registry().with_resource(defs["$id"], Resource.from_contents(defs))
    passed = failed = 0
    for path in files:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if not doc:
                continue
            name = f"{path.name}[{i}] {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            schema_path = args.schemas / schema_file(doc)
            if not schema_path.exists():
                print(f"FAIL {name}: no schema {schema_path.name} (kind or apiVersion unknown)")
                failed += 1
                continue
            schema = json.loads(schema_path.read_text())
            v = Draft202012Validator(schema, registry=registry)
            errors = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
            if errors:
                failed += 1
                for e in errors[:10]:
                    where = ".".join(str(p) for p in e.absolute_path) or "(document)"
                    print(f"FAIL {name}: {where}: {e.message}")
            else:
                passed += 1
                print(f"ok   {name}")
    # The kustomization names every manifest, and only existing ones.
    kust = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    listed = set(kust.get("resources", []))
    present = {p.name for p in HERE.glob("*.yaml") if p.name != "kustomization.yaml"}
    if listed != present:
        print(f"FAIL kustomization.yaml: lists {sorted(listed)}, the folder has {sorted(present)}")
        failed += 1
    else:
        passed += 1
        print("ok   kustomization.yaml lists every manifest")
    print(f"kubernetes manifests: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
