"""Adapters are model names of their base revision at the root URL and in ``/v1/models``."""

from __future__ import annotations

import json

from activator.models import model_list
from activator.routing import ModelList, build_route_table, resolve, route_model
from torpor.manifest import apply_manifest, parse_service

MANIFEST = """apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: base
spec:
  template:
    metadata:
      annotations:
        torpor.dev/lora-adapters: "sql=/models/sql,poet=/models/poet"
    spec:
      containers:
        - image: runtime
          args: ["--model=/models/tiny", "--served-model-name=base-model"]
"""


def test_adapters_route_to_their_base_and_are_listed_with_their_parent() -> None:
    service = apply_manifest(parse_service(MANIFEST), None)
    table = build_route_table([service], "example.com")
    route = route_model(table, "sql", "/v1/completions", 0.5)
    assert route.revision.ref.name == "base-00001" and route.adapter == "sql"
    assert route_model(table, "base-model", "/v1/completions", 0.5).adapter is None
    listed = resolve(table, "", "/v1/models", 0.5)
    assert isinstance(listed, ModelList)
    assert listed.models == ("base-model", "poet", "sql")
    body = json.loads(model_list(listed.models, 0, dict(listed.parents)))
    parents = {m["id"]: m.get("parent") for m in body["data"]}
    assert parents == {"base-model": None, "poet": "base-model", "sql": "base-model"}
    per_service = resolve(table, "", "/default/base/v1/models", 0.5)
    assert isinstance(per_service, ModelList) and "sql" in per_service.models
