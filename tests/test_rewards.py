"""Reward components on literal, hand-made completions (adversarial ones included)."""
import pytest

from meddialog.params import RewardParams
from meddialog.training import rewards
from meddialog.verl import reward as verl_reward

REF = "Rest, drink plenty of fluids and see a doctor if the fever lasts more than three days."
ALL_ON = RewardParams(**{name: 1.0 for name in rewards.REWARDS})
LOOP = "the patient " * 2500  # 10,000 characters of a degenerate loop


def test_similarity_is_rouge_l():
    assert rewards.similarity(REF, REF) == pytest.approx(1.0)
    assert rewards.similarity("quantum chromodynamics", REF) == 0.0
    assert 0 < rewards.similarity("Drink plenty of fluids.", REF) < 1


def test_length_full_inside_range_and_smooth_outside():
    ref = " ".join(["word"] * 20)
    assert rewards.length(" ".join(["x"] * 20), ref) == 1.0
    assert rewards.length(" ".join(["x"] * 10), ref) == 1.0  # 0.5 × 20
    assert rewards.length(" ".join(["x"] * 30), ref) == 1.0  # 1.5 × 20
    short, shorter = rewards.length("x x x x x", ref), rewards.length("x", ref)
    assert 0 < shorter < short < 1
    assert rewards.length(" ".join(["x"] * 40), ref) == pytest.approx(pytest.approx(2.718281828 ** -0.5))
    assert rewards.length("", ref) > 0  # smooth: never exactly zero


def test_coherence_penalises_repetition_and_loops():
    assert rewards.coherence(REF) == 1.0
    assert rewards.coherence("") == 0.0
    assert rewards.coherence(LOOP) < 0.01
    assert rewards.coherence("Take rest. Take rest. Take rest. Take rest.") < 0.5


def test_quality_checks_sentence_end_leaks_and_emptiness():
    assert rewards.quality(REF) == 1.0
    assert rewards.quality("") == 0.0
    assert rewards.quality("   \n ") == 0.0
    assert rewards.quality("Drink fluids and") == pytest.approx(2 / 3)
    assert rewards.quality("Drink fluids. <|im_end|> Rest.") == pytest.approx(2 / 3)
    assert rewards.quality("Drink fluids.\nPatient: thanks doctor.") == pytest.approx(2 / 3)
    assert rewards.quality("<|im_start|>assistant\nHello") == pytest.approx(1 / 3)


def test_safety_red_flags_need_urgent_advice():
    chest = "I'm 58 and have crushing chest pain spreading to my left arm."
    assert rewards.safety("Call 911 or go to the emergency department now.", prompt=chest) == 1.0
    assert rewards.safety("It is probably muscular; try a warm compress.", prompt=chest) == -0.5
    assert rewards.safety("Call an ambulance.", prompt="I have a mild sore throat.") == 0.0
    assert rewards.has_red_flag("I've been having thoughts of suicide lately")
    assert rewards.has_red_flag("my dad's face is drooping and his speech is slurred speech")
    assert not rewards.has_red_flag("My knee hurts after running.")


def test_safety_never_rewards_definitive_diagnosis_or_prescription_dosing():
    chest = "Sudden chest pain and shortness of breath."
    assert rewards.safety("You definitely have pneumonia. Go to the emergency room.", prompt=chest) == -1.0
    assert rewards.safety("Take amoxicillin 500 mg three times a day.", prompt="I have an earache.") == -1.0
    assert rewards.safety("Take paracetamol as directed on the pack.", prompt="I have an earache.") == 0.0
    assert rewards.safety("Your doctor may prescribe antibiotics.", prompt="earache") == 0.0


def test_no_prompt_scores_prompt_dependent_parts_neutrally():
    assert rewards.safety("Try rest and fluids.", prompt=None) == 0.0


@pytest.mark.parametrize("completion", ["", LOOP, "Patient: I feel bad\nDoctor: ok<|im_end|>",
                                        "Reposez-vous et buvez beaucoup d'eau. 多喝水。 Ñandú — ¿fiebre?"])
def test_adversarial_inputs_stay_in_range(completion):
    values = rewards.score_components(completion, REF, "I have a fever and chest pain.", ALL_ON)
    assert 0.0 <= values["similarity"] <= 1.0 and 0.0 <= values["embedding"] <= 1.0
    assert 0.0 < values["length"] <= 1.0 and 0.0 <= values["coherence"] <= 1.0
    assert 0.0 <= values["quality"] <= 1.0 and -1.0 <= values["safety"] <= 1.0
    assert values["score"] == pytest.approx(sum(v for k, v in values.items() if k != "score"))


def test_weights_of_zero_skip_a_component():
    params = RewardParams(similarity=2.0, embedding=0.0, length=0.0, coherence=0.0, quality=0.0, safety=0.0)
    values = rewards.score_components(REF, REF, None, params)
    assert set(values) == {"similarity", "score"} and values["score"] == pytest.approx(2.0)


def test_trl_and_verl_entry_points_agree():
    params = verl_reward._default_reward_params()
    functions, weights = rewards.reward_functions(params)
    completions = ["Please call emergency services now.", "You definitely have flu.", "", LOOP[:500]]
    prompt = "I suddenly have chest pain and trouble breathing."
    trl_total = [0.0] * len(completions)
    for function, weight in zip(functions, weights):
        values = function(completions=[[{"role": "assistant", "content": c}] for c in completions],
                          reference=[REF] * len(completions), question=[prompt] * len(completions),
                          prompts=[[{"role": "user", "content": prompt}]] * len(completions))
        trl_total = [t + weight * v for t, v in zip(trl_total, values)]
    for completion, total in zip(completions, trl_total):
        verl = verl_reward.compute_score("healthcaremagic", completion, REF, extra_info={"question": prompt})
        assert verl["score"] == pytest.approx(total)
        assert set(verl) == {"score", *(f.__name__ for f in functions)}


def test_verl_call_without_extra_info():
    result = verl_reward.compute_score("medical_flashcards", "Drink fluids.", REF)
    assert result["safety"] == 0.0 and "score" in result


def test_reward_function_names_are_stable_for_logging():
    functions, _ = rewards.reward_functions(ALL_ON)
    assert [f.__name__ for f in functions] == list(rewards.COMPONENTS)
