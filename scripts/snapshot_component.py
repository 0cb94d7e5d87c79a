"""Regenerate the component input snapshot that ftkit ships for offline validation.

Reads a component spec with azure-ai-ml's own ``load_component`` (so the snapshot holds what the SDK sees)
and writes ``src/ftkit/components/<name>-<version>.json``: names, types, enums, bounds, defaults. Descriptions
are left out on purpose: ftkit carries facts, not copies of the spec.

Usage: python scripts/snapshot_component.py PATH/TO/spec.yaml
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from azure.ai.ml import load_component

KEYS = ("type", "optional", "default", "enum", "min", "max")


def main() -> None:
    """Write the snapshot of the spec named on the command line."""
    spec = Path(sys.argv[1])
    component = load_component(source=spec)
    inputs = {}
    for name, port in component.inputs.items():
        raw = port._to_dict()  # the SDK's own serialisation of a declared input
        inputs[name] = {k: raw[k] for k in KEYS if k in raw}
    outputs = {name: port.type for name, port in component.outputs.items()}
    body = {
        "name": component.name,
        "version": component.version,
        "type": component.type,
        "inputs": inputs,
        "outputs": outputs,
    }
    out = Path(__file__).parents[1] / "src/ftkit/components" / f"{component.name}-{component.version}.json"
    out.write_text(json.dumps(body, indent=1, sort_keys=False) + "\n")
    print(f"wrote {out} ({len(inputs)} inputs)")


if __name__ == "__main__":
    main()
