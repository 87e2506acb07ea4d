"""The template language: every construct, the problems with their positions, and how choices
are made (seeded: a fixed function of the seed; unseeded: uniform per choice)."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Any

import pytest

from whatsdex.templates import syntax
from whatsdex.templates.syntax import TemplateInvalid, contact_fields, parse, render

ANA = contact_fields(name="Ana Maria Lima", phone="15551234567",
                     custom={"company": "Acme Bakery", "visits": 3, "vip": True, "empty": ""})


def rendered(body: str, fields: dict[str, Any] | None = None, seed: str | int = "s") -> str:
    template = parse(body)
    assert template.ok, template.problems
    return render(template, ANA if fields is None else fields, seed=seed)


# -- Constructs ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "expected"), [
    ("Hello", "Hello"),
    ("", ""),
    ("Hi {{name}}", "Hi Ana Maria Lima"),
    ("Hi {{first_name}}!", "Hi Ana!"),
    ("{{phone}}", "+15551234567"),
    ("at {{custom.company}}", "at Acme Bakery"),
    ("{{custom.visits}} visits, vip: {{custom.vip}}", "3 visits, vip: yes"),
    ("{{ first_name }}", "Ana"),
    ("{{\tfirst_name\n}}", "Ana"),
    ("{{first_name|there}}", "Ana"),
    ("{{custom.empty|friend}}", "friend"),
    ("{{custom.missing|friend}}", "friend"),
    ("{{ custom.missing | dear friend }}", "dear friend"),
    ("{{custom.missing|}}.", "."),
    ("{{custom.missing}}.", "."),
    ("{{custom.missing|a\\}b\\|c}}", "a}b|c"),
    ("{{custom.missing|x|y}}", "x|y"),
    ("A | B", "A | B"),
    ("\\{not a choice\\}", "{not a choice}"),
    ("\\{\\{name\\}\\}", "{{name}}"),
    ("a \\| b \\\\ c", "a | b \\ c"),
    ("C:\\path\\new", "C:\\path\\new"),
    ("50% off!\n\nLine three", "50% off!\n\nLine three"),
    ("emoji 🎉 {{first_name}}", "emoji 🎉 Ana"),
    ("{{first_name}}}}", None),  # a stray `}}` after a variable is a problem (tested below)
])
def test_constructs_render(body: str, expected: str | None) -> None:
    if expected is None:
        assert not parse(body).ok
    else:
        assert rendered(body) == expected


@pytest.mark.parametrize(("fields", "expected"), [
    ({"name": "  ", "phone": ""}, "Hi there, call ."),
    ({}, "Hi there, call ."),
    ({"name": None}, "Hi there, call ."),
    ({"name": "Bo"}, "Hi Bo, call ."),
    ({"first_name": "Bea", "name": "Beatriz Silva"}, "Hi Bea, call ."),
    ({"name": "Cy Young", "phone": "+4930123"}, "Hi Cy, call +4930123."),
])
def test_defaults_apply_to_missing_or_blank_values(fields: dict[str, Any], expected: str) -> None:
    assert rendered("Hi {{first_name|there}}, call {{phone}}.", fields) == expected


def test_custom_fields_may_be_nested_or_flat() -> None:
    body = "{{custom.company}}/{{custom.city|none}}"
    assert rendered(body, {"custom": {"company": "Acme"}}) == "Acme/none"
    assert rendered(body, {"custom.company": "Acme", "custom.city": "Porto"}) == "Acme/Porto"
    assert rendered("{{custom.tags}}", {"custom": {"tags": ["a", "b"]}}) == '["a", "b"]'


def test_contact_fields_from_a_contact_row() -> None:
    fields = contact_fields(name="", push_name="Zé Carlos", phone="351912345678",
                            custom='{"company": "Tasca", "zip": 1100}')
    assert fields["name"] == "Zé Carlos"
    assert fields["first_name"] == "Zé"
    assert fields["phone"] == "+351912345678"
    assert fields["custom.company"] == "Tasca"
    assert rendered("{{custom.zip}}", fields) == "1100"
    assert contact_fields(custom="not json")["phone"] == ""
    assert contact_fields(custom="[1, 2]") == {"name": "", "first_name": "", "phone": ""}


@pytest.mark.parametrize(("body", "outputs", "count"), [
    ("{Hi|Hello|Hey}", {"Hi", "Hello", "Hey"}, 3),
    ("{Hi|Hello {friend|there}}", {"Hi", "Hello friend", "Hello there"}, 3),
    ("{{Hi|Hello} there|Hey}", {"Hi there", "Hello there", "Hey"}, 3),
    ("{a|b} {c|d|e}", {"a c", "a d", "a e", "b c", "b d", "b e"}, 6),
    ("{very | }good", {"very good", " good"}, 2),
    ("{Hi {{first_name|there}}|Yo {{custom.company}}}", {"Hi Ana", "Yo Acme Bakery"}, 2),
    ("{a|b|{c|{d|e}}}", {"a", "b", "c", "d", "e"}, 5),
    ("{x\\|y|z}", {"x|y", "z"}, 2),
    ("plain", {"plain"}, 1),
])
def test_choices_reach_every_option(body: str, outputs: set[str], count: int) -> None:
    template = parse(body)
    assert template.ok, template.problems
    assert syntax.variants(template) == count
    seen = {render(template, ANA, seed=f"recipient-{k}") for k in range(300)}
    assert seen == outputs
    assert {render(template, ANA) for _ in range(300)} == outputs


def test_variables_lists_every_name_in_every_option() -> None:
    template = parse("{{name}} {a {{phone}}|b {c|{{custom.company|x}}}} {{ first_name | y }}")
    assert syntax.variables(template) == {"name", "phone", "custom.company", "first_name"}
    assert syntax.variables(parse("no variables {a|b}")) == set()


def test_variants_counts_combinations() -> None:
    assert syntax.variants(parse("")) == 1
    assert syntax.variants(parse("{a|a}")) == 2  # combinations, not distinct texts
    assert syntax.variants(parse("{a|b}" * 40)) == 2**40


def test_missing_names_gaps_only() -> None:
    template = parse("{{first_name|there}} {{custom.company}} {{phone}} {{custom.city|}} "
                     "{a|{{custom.zip}}}")
    fields = {"name": "", "phone": "+1555"}
    assert syntax.missing(template, fields) == ["custom.company", "custom.zip"]
    assert syntax.missing(template, ANA) == ["custom.zip"]


@pytest.mark.parametrize("text", ["{x}", "a|b", "\\", "\\{", "{{name}}", "}{|\\\\", "plain"])
def test_escape_round_trips(text: str) -> None:
    assert rendered(syntax.escape(text)) == text


def test_escape_round_trips_random_text() -> None:
    rng = random.Random(7)
    for _ in range(500):
        text = "".join(rng.choice("{}|\\ab \n") for _ in range(rng.randint(0, 30)))
        assert rendered(syntax.escape(text)) == text


# -- Problems, with positions ----------------------------------------------------------------------

def problems(body: str) -> list[tuple[int, str]]:
    return [(p.position, p.code) for p in parse(body).problems]


@pytest.mark.parametrize(("body", "expected"), [
    ("{{Name}}", [(0, "unknown_variable")]),
    ("Hi {{company}}", [(3, "unknown_variable")]),
    ("{{custom.Company}}", [(0, "bad_custom_key")]),
    ("{{custom.}}", [(0, "bad_custom_key")]),
    ("{{custom.9lives}}", [(0, "bad_custom_key")]),
    ("{{custom." + "a" * 41 + "}}", [(0, "bad_custom_key")]),
    ("{{}}", [(0, "empty_variable")]),
    ("x {{ | fallback }}", [(2, "empty_variable")]),
    ("{{name} and {{phone}}", [(0, "unclosed_variable")]),
    ("{a|b", [(0, "unclosed_choice")]),
    ("ok {a|{b|c}", [(3, "unclosed_choice")]),
    ("x}", [(1, "unmatched_close")]),
    ("{{first_name}}}}", [(14, "unmatched_close"), (15, "unmatched_close")]),
    ("{a||b}", [(3, "empty_option")]),
    ("{|a}", [(1, "empty_option")]),
    ("{a|}", [(3, "empty_option")]),
    ("{}", [(0, "empty_choice")]),
    ("{name}", [(0, "single_option")]),
    ("{a|" * 11 + "b" + "}" * 11, [(30, "too_deep")]),
    ("a" * 4097, [(4096, "too_long")]),
])
def test_problems_and_their_positions(body: str, expected: list[tuple[int, str]]) -> None:
    assert problems(body) == expected


@pytest.mark.parametrize("body", [
    "a" * 4096,
    "{{custom." + "a" * 40 + "}}",
    "{{custom.a_1}}",
    "{a|" * 10 + "b" + "}" * 10,
    "{{ name | }}",
])
def test_valid_edge_cases(body: str) -> None:
    assert parse(body).ok, parse(body).problems


def test_every_problem_is_reported_at_once_with_line_and_column() -> None:
    body = "Hi\n{{Name}}\n  {a|} and {x|y\n" + "z" * 4100
    found = parse(body).problems
    assert [(p.code, p.line, p.column) for p in found] == [
        ("unknown_variable", 2, 1),
        ("empty_option", 3, 6),
        ("unclosed_choice", 3, 12),
        ("too_long", 4, 4096 - 28 + 1),
    ]
    assert found[0].position == 3 and found[1].position == 17
    assert all(p.problem for p in found)


def test_messages_say_how_to_fix() -> None:
    def message(body: str) -> str:
        return parse(body).problems[0].problem

    assert "did you mean `{{name}}`" in message("{{Name}}")
    assert "`{{custom.company}}`" in message("{{company}}")
    assert "a variable is written `{{name}}`" in message("{name}")
    assert "\\}" in message("oops }")
    assert "4,096" in message("x" * 5000)


def test_a_pathological_body_is_summarised() -> None:
    found = parse("}" * 500).problems
    assert len(found) == syntax.MAX_PROBLEMS + 1
    assert found[-1].code == "more_problems" and "400 more" in found[-1].problem
    deep = parse("{" * 5000)  # no recursion error, and the nesting limit is what is reported
    assert "too_deep" in {p.code for p in deep.problems}


def test_render_refuses_a_template_with_problems() -> None:
    with pytest.raises(TemplateInvalid) as caught:
        render(parse("{{Name}} {a|}"), ANA)
    assert caught.value.status_code == 400
    assert [d["code"] for d in caught.value.detail] == ["unknown_variable", "empty_option"]
    assert set(caught.value.detail[0]) == {"position", "line", "column", "code", "problem"}


# -- Seeds and randomness --------------------------------------------------------------------------

def test_a_seed_always_makes_the_same_choices() -> None:
    body = "{Hi|Hello|Hey} {{first_name}}, {great|nice} {news|{offer|deal}} {a|b|c|d|e|f|g}"
    first = [render(parse(body), ANA, seed=f"rcp_{k}") for k in range(50)]
    again = [render(parse(body), ANA, seed=f"rcp_{k}") for k in range(50)]
    assert first == again
    assert len(set(first)) > 10  # and different recipients get different texts
    assert render(parse(body), ANA, seed=42) == render(parse(body), ANA, seed="42")


def test_the_seeded_choice_is_the_documented_hash() -> None:
    """Pinned, so a retried send renders the same text after an upgrade too."""
    def expected(seed: str, n: int, options: int) -> int:
        digest = hashlib.sha256(f"{seed}\x00{n}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % options

    options = ["a", "b", "c", "d", "e", "f", "g"]
    for seed in ("rcp_1", "rcp_2", "x"):
        first, second = expected(seed, 1, 7), expected(seed, 2, 7)
        assert rendered("{a|b|c|d|e|f|g}-{a|b|c|d|e|f|g}", seed=seed) == \
            f"{options[first]}-{options[second]}"


def chi_square(counts: Counter[str], expected: dict[str, float]) -> float:
    return sum((counts[key] - e) ** 2 / e for key, e in expected.items())


def test_unseeded_choices_are_uniform() -> None:
    template = parse("{a|b|c|d|e}")
    counts = Counter(render(template, {}) for _ in range(10_000))
    # 4 degrees of freedom: 30 is far beyond p = 0.0001 (23.5), a broken chooser is far above.
    assert chi_square(counts, dict.fromkeys("abcde", 2000.0)) < 30, counts


def test_nested_choices_are_uniform_per_choice() -> None:
    template = parse("{a|{b|c}}")
    counts = Counter(render(template, {}) for _ in range(10_000))
    assert chi_square(counts, {"a": 5000.0, "b": 2500.0, "c": 2500.0}) < 25, counts


def test_seeds_spread_recipients_evenly() -> None:
    template = parse("{a|b|c|d}")
    counts = Counter(render(template, {}, seed=f"rcp_{k}") for k in range(8_000))
    assert chi_square(counts, dict.fromkeys("abcd", 2000.0)) < 25, counts
