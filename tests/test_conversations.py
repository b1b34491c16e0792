import pytest

from meddialog.data.conversations import Dropped, clean_text, to_turns


def roles(turns):
    return [t["role"] for t in turns]


def test_instruction_input_output():
    turns = to_turns({"instruction": "Answer this question truthfully", "input": "What is X?", "output": "X is Y."})
    assert turns == [{"role": "user", "content": "What is X?"}, {"role": "assistant", "content": "X is Y."}]


def test_the_fixed_instruction_is_never_taken_for_the_question():
    with pytest.raises(Dropped, match="empty_question"):
        to_turns({"instruction": "Answer this question truthfully", "input": "", "output": "Uric acid crystals."})


def test_question_answer():
    assert roles(to_turns({"question": "Q?", "answer": "An answer."})) == ["user", "assistant"]


def test_sharegpt_merges_same_speaker_and_cuts_trailing_user():
    record = {"conversations": [
        {"from": "system", "value": "ignored"},
        {"from": "human", "value": "I have a cough."},
        {"from": "human", "value": "Also a fever."},
        {"from": "gpt", "value": "How long?"},
        {"from": "human", "value": "Three days."},
        {"from": "gpt", "value": "Rest and fluids."},
        {"from": "human", "value": "Thanks!"},
    ]}
    turns = to_turns(record)
    assert roles(turns) == ["user", "assistant", "user", "assistant"]
    assert turns[0]["content"] == "I have a cough.\n\nAlso a fever."
    assert turns[-1]["content"] == "Rest and fluids."


def test_openai_messages_drop_leading_assistant():
    record = {"messages": [{"role": "assistant", "content": "Hello, how can I help?"},
                           {"role": "user", "content": "My knee hurts."},
                           {"role": "assistant", "content": "Since when?"}]}
    assert roles(to_turns(record)) == ["user", "assistant"]


@pytest.mark.parametrize("text", [
    "Patient: My head hurts.\nDoctor: Where exactly?\nPatient: Behind the eyes.\nDoctor: Likely tension.",
    "<human>: My head hurts.\n<bot>: Where exactly?\n<human>: Behind the eyes.\n<bot>: Likely tension.",
    "User: My head hurts.\nAssistant: Where exactly?\nUser: Behind the eyes.\nAssistant: Likely tension.",
])
def test_text_with_speaker_markers(text):
    turns = to_turns({"text": text})
    assert roles(turns) == ["user", "assistant", "user", "assistant"]
    assert turns[2]["content"] == "Behind the eyes." and turns[3]["content"] == "Likely tension."


def test_leaked_patient_turn_is_cut_from_the_answer():
    record = {"instruction": "x", "input": "What tests?", "output": "First a urinalysis.Patient: Okay, what else?"}
    assert to_turns(record)[-1]["content"] == "First a urinalysis."


def test_clean_text_unescapes_html_and_whitespace():
    assert clean_text("  Fever &amp; chills&#39;  \t here \n\n\n\n next ") == "Fever & chills' here\n\nnext"


@pytest.mark.parametrize("record, reason", [
    ({"instruction": " ", "input": "   ", "output": "An answer."}, "empty_question"),
    ({"question": "Q?", "answer": " "}, "empty_answer"),
    ({"foo": "bar"}, "unknown_format"),
    ({"text": "no markers at all"}, "unknown_format"),
    ({"conversations": [{"from": "alien", "value": "hi"}]}, "unknown_format"),
    ({"conversations": [{"from": "human", "value": "Hello?"}]}, "no_assistant_turn"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]}, "no_assistant_turn"),
    ({"question": "Q?", "answer": "bad \ufffd bytes"}, "undecodable"),
])
def test_drop_reasons(record, reason):
    with pytest.raises(Dropped) as err:
        to_turns(record)
    assert err.value.reason == reason


WRONG = [42, 3.5, True, ["a", "list"], {"text": "an object"}]


@pytest.mark.parametrize("value", WRONG, ids=repr)
@pytest.mark.parametrize("build", [
    lambda v: {"instruction": "Answer", "input": v, "output": "An answer long enough."},
    lambda v: {"instruction": "Answer", "input": "A question?", "output": v},
    lambda v: {"question": v, "answer": "An answer long enough."},
    lambda v: {"question": "A question?", "answer": v},
    lambda v: {"conversations": [{"from": "human", "value": v}, {"from": "gpt", "value": "An answer."}]},
    lambda v: {"conversations": [{"from": "human", "value": "A question?"}, {"from": "gpt", "value": v}]},
    lambda v: {"conversations": [{"from": v, "value": "A question?"}, {"from": "gpt", "value": "An answer."}]},
    lambda v: {"messages": [{"role": "user", "content": v}, {"role": "assistant", "content": "An answer."}]},
    lambda v: {"messages": [{"role": "user", "content": "A question?"}, {"role": "assistant", "content": v}]},
    lambda v: {"messages": [{"role": "system", "content": v}, {"role": "user", "content": "Q?"},
                            {"role": "assistant", "content": "An answer."}]},
    lambda v: {"text": v},
], ids=["flashcard input", "flashcard output", "question", "answer", "sharegpt value", "sharegpt answer",
        "sharegpt speaker", "openai content", "openai answer", "openai system", "text"])
def test_a_non_string_where_text_belongs_drops_the_record(build, value):
    """Every accepted format, every place text goes: never str()-ed into a training example."""
    with pytest.raises(Dropped) as err:
        to_turns(build(value))
    assert err.value.reason == "wrong_type"


@pytest.mark.parametrize("record", [{"conversations": "human: hi"}, {"messages": {"role": "user"}},
                                    {"messages": ["a question", "an answer"]}], ids=repr)
def test_turns_that_are_not_a_list_of_objects_are_the_wrong_type(record):
    with pytest.raises(Dropped) as err:
        to_turns(record)
    assert err.value.reason == "wrong_type"


def test_a_null_text_is_a_missing_one():
    with pytest.raises(Dropped) as err:
        to_turns({"question": None, "answer": "An answer long enough."})
    assert err.value.reason == "empty_question"
