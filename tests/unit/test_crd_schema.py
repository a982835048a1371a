"""The generated schema is structural and carries the constraints users rely on."""

from __future__ import annotations

from typing import Any

from qorch.api.crd import hybrid_workflow_crd, quantum_backend_crd


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.items():
            out.extend(_walk(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_walk(value, f"{path}[{i}]"))
    return out


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_schemas_are_structural() -> None:
    for crd in (hybrid_workflow_crd(), quantum_backend_crd()):
        for path, node in _walk(_schema(crd)):
            assert "$ref" not in node, path
            assert "anyOf" not in node, path
            assert "title" not in node, path
            assert "default" not in node, path
            if "properties" in node:
                assert node.get("type") == "object", path


def test_workflow_schema_constraints() -> None:
    spec = _schema(hybrid_workflow_crd())["properties"]["spec"]
    subtasks = spec["properties"]["subtasks"]
    assert subtasks["minItems"] == 1 and subtasks["maxItems"] == 200
    assert subtasks["x-kubernetes-list-type"] == "map"
    assert subtasks["x-kubernetes-list-map-keys"] == ["name"]
    item = subtasks["items"]
    assert item["properties"]["name"]["maxLength"] == 30
    assert "pattern" in item["properties"]["name"]
    circuit = item["properties"]["circuit"]
    assert circuit["properties"]["shots"]["minimum"] == 1
    assert circuit["properties"]["primitive"]["enum"] == ["sampler", "estimator"]
    rules = [r["rule"] for r in circuit["x-kubernetes-validations"]]
    assert any("observables" in r for r in rules)


def test_printer_columns_and_names() -> None:
    crd = hybrid_workflow_crd()
    cols = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert cols == ["Phase", "Done/Total", "Cost", "Moves", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["hwf"]
    assert "qorch" in crd["spec"]["names"]["categories"]
    assert crd["spec"]["scope"] == "Namespaced"
    assert quantum_backend_crd()["spec"]["scope"] == "Cluster"
