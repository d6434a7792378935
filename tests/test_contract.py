"""The signal contract: register packing, ranges, and the docs generated from it."""

from pathlib import Path

import pytest

from plcbridge.contract import (
    BASE_INPUT_SIGNALS,
    BASE_OUTPUT_SIGNALS,
    INPUT_SIGNALS,
    OUTPUT_SIGNALS,
    Inputs,
    Outputs,
    score_to_register,
)
from plcbridge.contract.modbus import RegisterMap
from plcbridge.tools.docs import render_interface_doc

ROOT = Path(__file__).resolve().parents[1]


def test_default_layout_matches_the_published_offsets():
    m = RegisterMap()
    assert m.output_signals == BASE_OUTPUT_SIGNALS  # the optional outputs: tests/test_optional_outputs.py
    assert m.offsets(BASE_OUTPUT_SIGNALS) == {
        "heartbeat": 0, "status": 1, "result_seq": 2, "result_code": 3, "score": 4,
        "fault_code": 5, "latency_ms": 6, "model_version": 7, "part_id": 8,
    }
    assert m.input_signals == BASE_INPUT_SIGNALS  # the optional input recipe_id: tests/test_recipes.py
    assert m.offsets(BASE_INPUT_SIGNALS) == {"trigger_seq": 0, "part_id": 1, "result_ack_seq": 3}
    assert (m.outputs_count, m.inputs_count) == (10, 4)


@pytest.mark.parametrize("order,regs", [("high_first", [0x1234, 0x5678]), ("low_first", [0x5678, 0x1234])])
def test_u32_word_order(order, regs):
    m = RegisterMap(word_order=order)
    o = Outputs(heartbeat=7, part_id=0x12345678)
    encoded = m.encode_outputs(o)
    assert encoded[8:10] == regs
    assert m.decode_outputs(encoded) == o
    i = Inputs(trigger_seq=65535, part_id=0x12345678, result_ack_seq=3)
    assert m.decode_inputs(m.encode_inputs(i)) == i


def test_out_of_range_values_are_refused_by_name():
    with pytest.raises(ValueError, match="heartbeat=65536"):
        RegisterMap().encode_outputs(Outputs(heartbeat=65536))
    with pytest.raises(ValueError, match="part_id"):
        RegisterMap().encode_inputs(Inputs(part_id=-1))
    with pytest.raises(ValueError, match="expected 4 registers"):
        RegisterMap().decode_inputs([1, 2, 3])


def test_score_register_fails_closed():
    assert score_to_register(0.25) == 2500
    assert score_to_register(7.0) == 10000
    assert score_to_register(-1) == 0
    assert score_to_register(float("nan")) == 10000


def test_interface_doc_is_generated_from_the_contract():
    path = ROOT / "docs" / "plc-interface.md"
    assert path.read_text() == render_interface_doc(path), "run `plcbridge docs` to regenerate docs/plc-interface.md"
    text = path.read_text()
    for s in OUTPUT_SIGNALS + INPUT_SIGNALS:
        assert f"`{s.name}`" in text
    assert "PROGRAM InspectionHandshake" in text  # the Structured Text example
