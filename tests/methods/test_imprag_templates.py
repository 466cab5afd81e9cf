"""ImpRAG's prompt templates against the chapter's literal text (Table 5.1, Table C.4)."""
import dataclasses

import pytest

from kipjax.methods.imprag import templates as t

INSTRUCTION_EL = "Output the Wikipedia page title of the entity mentioned between [START] and [END] in the given text"
INSTRUCTION_SF = ("Provide the answer corresponding to the relation specified after [SEP] for the entity mentioned "
                  "before [SEP]")
INSTRUCTION_SG = ("Generate a sentence corresponding to the relation specified after [SEP] for the context "
                  "mentioned before [SEP]")


def test_template_constants_are_the_tables_text():
    assert t.QA_TEMPLATE == "Q: {question} A: {answer}"
    assert t.ENTITY_LINKING_TEMPLATE == ("{context} Output the Wikipedia page title of the entity mentioned between "
                                         "[START] and [END] in the given text A: {answer}")
    assert t.FACT_CHECK_TEMPLATE == "Is this statement true? {statement} A: {answer}"
    assert t.SLOT_FILLING_TEMPLATE == ("{entity} [SEP] {relation} Provide the answer corresponding to the relation "
                                       "specified after [SEP] for the entity mentioned before [SEP] A: {answer}")
    assert t.READING_COMPREHENSION_TEMPLATE == "{context} Q: {question} A: {answer}"
    assert t.SUMMARIZATION_TEMPLATE == "{context} Summarize this article: {summary}"
    assert t.PHRASE_DENOISING_TEMPLATE == ("{context} Recover the original phrases marked between [START] and [END] "
                                           "in the given text A: {answer}")
    assert t.SENTENCE_GENERATION_TEMPLATE == (
        "{context} [SEP] next/previous sentence Generate a sentence corresponding to the relation specified after "
        "[SEP] for the context mentioned before [SEP] A: {sentence}")
    assert set(t.TEMPLATES) == {"qa", "entity_linking", "fact_check", "slot_filling", "reading_comprehension",
                                "summarization", "dialogue", "phrase_denoising", "sentence_generation"}
    assert t.RETRIEVAL_KINDS == {"qa", "entity_linking", "fact_check", "slot_filling"}


def test_qa():
    assert t.render_qa(" who founded Tolbek ? ", "Ivo Marsk ") == ("Q: who founded Tolbek ? A:", "Ivo Marsk")


def test_entity_linking_replaces_kilt_markers():
    context = "Fans queued to see [START_ENT] Tolbek [END_ENT] ."
    assert t.mark_mention(context) == "Fans queued to see [START] Tolbek [END] ."
    assert t.render_entity_linking(context, "Tolbek (band)") == (
        f"Fans queued to see [START] Tolbek [END] . {INSTRUCTION_EL} A:", "Tolbek (band)")


@pytest.mark.parametrize("context", ["no mention here .", "[START_ENT] a [END_ENT] and [START_ENT] b [END_ENT]",
                                     "[END_ENT] a [START_ENT]", "[START] a [END] ."])
def test_entity_linking_needs_one_kilt_mention(context):
    with pytest.raises(ValueError, match=r"expected one mention marked \[START_ENT\] \.\.\. \[END_ENT\]"):
        t.render_entity_linking(context, "Tolbek")


def test_fact_check():
    assert t.render_fact_check("Tolbek is in Varnia .", "True") == ("Is this statement true? Tolbek is in Varnia . A:",
                                                                    "True")
    assert t.fever_answer("SUPPORTS") == "True" and t.fever_answer("REFUTES") == "False"
    with pytest.raises(ValueError, match="FEVER label must be one of"):
        t.fever_answer("NOT ENOUGH INFO")
    with pytest.raises(ValueError, match="fact-checking answer must be one of"):
        t.render_fact_check("Tolbek is in Varnia .", "SUPPORTS")


def test_slot_filling():
    entity, relation = t.split_slot_query("Bram Fobros [SEP] place of birth")
    assert t.render_slot_filling(entity, relation, "Skaktin") == (
        f"Bram Fobros [SEP] place of birth {INSTRUCTION_SF} A:", "Skaktin")
    with pytest.raises(ValueError, match=r"with one \[SEP\]"):
        t.split_slot_query("Bram Fobros place of birth")


def test_reading_comprehension_and_summarization():
    assert t.render_reading_comprehension("Tolbek lies on the Vask .", "what river ?", "the Vask") == (
        "Tolbek lies on the Vask . Q: what river ? A:", "the Vask")
    assert t.render_summarization("Tolbek grew .\nIt is big .", "Tolbek grew .") == (
        "Tolbek grew .\nIt is big . Summarize this article:", "Tolbek grew .")


def test_dialogue():
    assert t.render_dialogue(["Hi !", " How are you ? ", "Fine ."]) == ("Hi ! How are you ?", "Fine .")
    with pytest.raises(ValueError, match="at least 2 turns"):
        t.render_dialogue(["Hi !"])
    with pytest.raises(ValueError, match="field 'turn_2' is empty"):
        t.render_dialogue(["Hi !", "  "])


def test_synthetic_tasks():
    assert t.render_phrase_denoising("The [START] big town [END] grew .", "city") == (
        "The [START] big town [END] grew . Recover the original phrases marked between [START] and [END] in the "
        "given text A:", "city")
    with pytest.raises(ValueError, match="expected phrases marked"):
        t.render_phrase_denoising("The town grew .", "city")
    assert t.render_sentence_generation("Tolbek grew .", "next", "It is big .") == (
        f"Tolbek grew . [SEP] next sentence {INSTRUCTION_SG} A:", "It is big .")
    assert t.render_sentence_generation("It is big .", "previous", "Tolbek grew .") == (
        f"It is big . [SEP] previous sentence {INSTRUCTION_SG} A:", "Tolbek grew .")
    with pytest.raises(ValueError, match="direction must be one of"):
        t.render_sentence_generation("Tolbek grew .", "next/previous", "x")


def test_empty_field_is_rejected():
    with pytest.raises(ValueError, match="field 'question' is empty"):
        t.render_qa(" ", "x")


def test_prompt_example():
    example = t.prompt_example("7", "nq", "qa", t.render_qa("who ?", "Ada"), [" Ada", "Ada", "Ada Vum"])
    assert example == t.PromptExample("7", "nq", "Q: who ? A:", "Ada", ("Ada", "Ada Vum"), True)
    summary = t.prompt_example("x", "cnn_dailymail", "summarization", t.render_summarization("a .", "b ."))
    assert summary == t.PromptExample("x", "cnn_dailymail", "a . Summarize this article:", "b .", ("b .",), False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.prompt = "y"
    with pytest.raises(ValueError, match="unknown template kind 'quiz'"):
        t.prompt_example("x", "nq", "quiz", ("a", "b"))


def test_kilt_task_kinds():
    assert t.KILT_TASK_KINDS == {
        "nq": "qa", "hotpotqa": "qa", "triviaqa": "qa", "fever": "fact_check", "aidayago2": "entity_linking",
        "aida": "entity_linking", "trex": "slot_filling", "structured_zeroshot": "slot_filling",
        "qa": "qa", "fc": "fact_check", "sf": "slot_filling", "el": "entity_linking"}
