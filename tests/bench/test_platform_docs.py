"""bench/platform rewrites only its generated block of docs/benchmarks.md, whatever else the page holds."""

from __future__ import annotations

from pathlib import Path

from bench.platform import BEGIN, END, write_docs

RESULTS = {
    "command": "python -m bench.platform",
    "load_at_end": [1.0, 1.0, 1.0],
    "machine": {
        "when": "2026-01-01 00:00 UTC",
        "commit": "abc1234",
        "cpu": "2 x test",
        "memory_gb": 1.0,
        "os": "Linux",
        "python": "3.11",
        "versions": {"optuna": "5"},
        "load_at_start": [1.0, 1.0, 1.0],
    },
    "optuna": {"trials": 10, "trials_per_s": 123.0, "tpe_ms_at_100": 1.0, "tpe_ms_at_500": 2.0},
}


def test_only_the_generated_block_changes(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Benchmarks\n\n## Search\n\nkept\n\n## Platform\n\nprose\n\n{BEGIN}\nSTALE-TABLE\n{END}\n\nafter\n")
    write_docs(RESULTS, page)
    text = page.read_text()
    assert "## Search\n\nkept" in text and "prose" in text and "after" in text
    assert "STALE-TABLE" not in text and "123.0 trials/s" in text and "abc1234" in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1


def test_a_page_without_the_section_gets_one(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n## Search\n\nkept\n")
    write_docs(RESULTS, page)
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\n## Search\n\nkept") and "## Platform" in text and BEGIN in text


def test_the_journal_peer_is_reported_with_its_ratio() -> None:
    from bench.platform import rows

    journal = {"trials": 100, "workers": 2, "trials_per_s": 50.0, "cpu_ms_per_trial": 3.0, "wall_s": 2.0}
    random = {"trials_per_s": 75.0, "steady_trials_per_s": 80.0, "trials": 100, "parallelism": 32}
    random |= {"latency_p50_ms": 1.0, "latency_p99_ms": 2.0}
    orchestration = {"runners": 2, "random": random, "tpe": random}
    table = {(r[1], r[2], r[4]) for r in rows({**RESULTS, "optuna_journal": journal, "orchestration": orchestration})}
    assert ("tweakline (mTLS) / Optuna journal mode, trials/s, same run", "1.50x", "[green]met[/green]") in table
    assert any("JournalStorage" in measure and "50.0 trials/s" in value for measure, value, _ in table)


def test_the_stack_footprint_is_reported_against_the_pss_target() -> None:
    from bench.platform import rows

    memory = {"runners": 2, "up_total_mib": 250.0, "peak_total_mib": 310.5, "target_mib": 300}
    memory |= {"peak_mib": {"trial-runner-0/child-2": 100.0, "evaluator": 80.0}}
    (row,) = [r for r in rows({**RESULTS, "memory": memory}) if r[0] == "5 memory"]
    assert "250.0 / 310.5" in row[2] and "trial-runner-0/child-2 100.0" in row[2]
    assert row[3] == "<= 300 MiB at peak" and row[4] == "[red]missed[/red]"
    (met,) = [r for r in rows({**RESULTS, "memory": memory | {"peak_total_mib": 299.0}}) if r[0] == "5 memory"]
    assert met[4] == "[green]met[/green]"


def test_a_large_experiment_is_met_only_with_every_trial_and_no_slow_down() -> None:
    from bench.platform import rows

    big = {"trials": 100, "parallelism": 32, "trials_per_s": 900.0, "cpu_ms_per_trial_total": 1.4}
    big |= {"first_tenth_trials_per_s": 1000.0, "last_tenth_trials_per_s": 950.0, "state_bytes": 30720}
    big |= {"segments": 4, "recorded": 100, "whole_read_s": 0.1, "whole_results": 100}
    sized = {**RESULTS, "sizes": {"large_trials": 100}}

    def verdict(**change: object) -> str:
        (row,) = [r for r in rows({**sized, "large": big | change}) if "one experiment of" in r[1]]
        return row[4]

    assert verdict() == "[green]met[/green]"
    assert verdict(last_tenth_trials_per_s=500.0) == "[red]missed[/red]", "slowed down as it grew"
    assert verdict(recorded=90, trials=90, whole_results=90) == "[red]missed[/red]", "stopped short of its budget"
