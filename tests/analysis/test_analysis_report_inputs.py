"""Bad or partial input: a clear error naming the file, or a report that shows the gaps."""
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.loading import load_results
from analysis.report import build_report
from commands import main as cli
from protocol.config import make_config
from protocol.results import TRIALS_SCHEMA, config_values, key_values, to_table, write_atomic


def test_missing_results_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "results")):
        build_report(tmp_path / "nowhere")


def test_wrong_schema_version_is_named(sweep_copy):
    path = sweep_copy.out_dir / "results" / "trials.parquet"
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({b"cxrsweep_schema_version": b"0"}), path)
    with pytest.raises(ValueError, match=r"trials\.parquet: schema version"):
        build_report(sweep_copy.out_dir)


def test_missing_column_is_named(sweep_copy):
    path = sweep_copy.out_dir / "results" / "images.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop(["dice"]), path)
    with pytest.raises(ValueError, match=r"images\.parquet: missing column\(s\) dice"):
        build_report(sweep_copy.out_dir)


def test_several_profiles_need_a_choice(sweep_copy):
    path = sweep_copy.out_dir / "results" / "trials.parquet"
    table = pq.read_table(path)
    profiles = pa.array(["smoke"] * (table.num_rows - 1) + ["cpu"])
    write_atomic(table.set_column(table.schema.get_field_index("profile"), "profile", profiles), path)
    with pytest.raises(ValueError, match="several profiles.*--profile"):
        build_report(sweep_copy.out_dir)
    chosen = load_results(sweep_copy.out_dir, profile="smoke")
    assert set(chosen.trials["profile"]) == {"smoke"} and len(chosen.trials) == table.num_rows - 1


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    error = capsys.readouterr().err
    assert "results directory not found" in error and "Traceback" not in error


def test_cli_builds_the_chosen_formats(sweep_copy, capsys):
    assert cli.main(["report", str(sweep_copy.out_dir), "--formats", "csv,html", "--ci", "bootstrap"]) == 0
    report_dir = sweep_copy.out_dir / "report"
    assert capsys.readouterr().out.strip() == str(report_dir / "index.html")
    assert (report_dir / "table1.csv").exists() and not (report_dir / "table1.md").exists()
    assert set(__import__("pandas").read_csv(report_dir / "table1.csv")["ci_method"]) == {"bootstrap"}


def test_partial_sweep_without_images_still_builds(tmp_path):
    cfg = make_config("smoke", experiment="segmentation", task="lungs", model="unet", fold=0)
    row = {**key_values(cfg, "only-one"), **config_values(cfg), "status": "ok", "test_jaccard_mean": 0.9,
           "test_dice_mean": 0.947, "schema_version": 1}
    write_atomic(to_table([row], TRIALS_SCHEMA), tmp_path / "results" / "trials.parquet")
    index = build_report(tmp_path)
    table1 = (tmp_path / "report" / "table1.md").read_text()
    assert "| unet | robust | **90.00** | **94.70** | — | — | 1 |" in table1
    assert "| segnet | robust | — | — | — | — | 0 |" in table1
    table2 = (tmp_path / "report" / "table2.md").read_text()
    assert "| 0 | — | — | — | — |" in table2
    assert "images.parquet not found" in index.read_text()


def test_empty_sweep_still_builds(tmp_path):
    write_atomic(to_table([], TRIALS_SCHEMA), tmp_path / "results" / "trials.parquet")
    assert build_report(tmp_path, formats=("md", "html")).exists()
    assert "0.00" not in (tmp_path / "report" / "table1.md").read_text()


def test_import_stays_light():
    """The report must never pull in torch or Ray (it has to build fast)."""
    code = ("import sys, analysis.report, analysis.cli; "
            "heavy = [m for m in ('torch', 'ray') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_retried_cell_counts_once(tmp_path):
    """A failed attempt and its successful retry are one cell: the ok row wins, the other is noted."""
    cfg = make_config("smoke", experiment="segmentation", task="heart", model="segnet", fold=1)
    keys = {**key_values(cfg, "attempt-2"), **config_values(cfg), "schema_version": 1}
    rows = [
        {**keys, "trial_id": "attempt-1", "status": "failed", "error": "node lost"},
        {**keys, "status": "ok", "test_jaccard_mean": 0.8, "test_dice_mean": 0.889},
        {**keys, "trial_id": "attempt-3", "status": "failed", "error": "written after the success"},
    ]
    write_atomic(to_table(rows, TRIALS_SCHEMA), tmp_path / "results" / "trials.parquet")
    results = load_results(tmp_path)
    assert list(results.trials["trial_id"]) == ["attempt-2"]
    assert sorted(results.superseded["trial_id"]) == ["attempt-1", "attempt-3"]
    assert results.failed.empty and "superseded" in results.notes[-1]


def test_one_fold_trained_with_two_recipes_is_two_cells(tmp_path):
    """The recipe is a grid axis: the same fold with augmentation none and robust is counted twice,
    once per recipe, never as a retry of one cell."""
    rows = []
    for recipe, jaccard in (("none", 0.70), ("robust", 0.80)):
        cfg = make_config("smoke", experiment="segmentation", task="lungs", model="unet", fold=0,
                          augmentation=recipe)
        rows.append({**key_values(cfg, f"unet-{recipe}"), **config_values(cfg), "schema_version": 4,
                     "status": "ok", "test_jaccard_mean": jaccard, "test_dice_mean": 2 * jaccard / (1 + jaccard)})
    write_atomic(to_table(rows, TRIALS_SCHEMA), tmp_path / "results" / "trials.parquet")
    results = load_results(tmp_path)
    assert sorted(results.trials["trial_id"]) == ["unet-none", "unet-robust"]
    assert results.superseded.empty


def test_two_label_budgets_are_two_sections_that_say_their_budget_and_epochs(tmp_path):
    """The same Table II cell under the honest budget and the paper's is two cells; Table II shows
    each in a section of its own and notes the budgets and every method's epochs."""
    rows = []
    for budget, jaccard in (("honest", 0.85), ("paper", 0.88)):
        for method in ("finetune", "proposed"):
            cfg = make_config("smoke", experiment="transfer", task="lungs", model="unet", method=method,
                              label_fraction=10.0, label_budget=budget)
            rows.append({**key_values(cfg, f"{method}-{budget}"), **config_values(cfg), "schema_version": 5,
                         "status": "ok", "test_jaccard_mean": jaccard, "test_dice_mean": 2 * jaccard / (1 + jaccard),
                         "target_labels_used": 2 if budget == "honest" else 8})
    write_atomic(to_table(rows, TRIALS_SCHEMA), tmp_path / "results" / "trials.parquet")
    results = load_results(tmp_path)
    assert len(results.trials) == 4 and results.superseded.empty
    build_report(tmp_path, formats=("md",))
    table = (tmp_path / "report" / "table2.md").read_text()
    assert "label budget: honest" in table and "label budget: paper" in table
    assert "Label budget: honest (a run at f % reads only its f % of target labels" in table
    smoke = make_config("smoke")
    assert (f"finetune {smoke.epochs} from M_A" in table
            and f"proposed {smoke.warmup_epochs}+{smoke.transfer_epochs} (translator warm-up" in table)
