import pytest

from kdpipe.config import ConfigError, load_params, parse_params
from kdpipe.methods.registry import check_runs, run_student

from conftest import REPO


def parse(raw: dict):
    """The schema (torch-free ``parse_params``) and every run against its method (``check_runs``),
    as the stages' preflight runs them."""
    return check_runs(parse_params(raw))


def test_shipped_params_are_valid():
    params = check_runs(load_params(REPO / "params.yaml"))
    assert params.task.name == "tweets" and params.teacher.model == "minilm"
    assert params.student.num_layers == 3
    assert "vanilla_kd" in params.distill.runs


def test_unknown_key_is_named_with_its_path_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"distill\.runs\.kd\.temprature: unknown key"):
        parse({"distill": {"runs": {"kd": {"method": "vanilla_kd", "temprature": 2}}}})
    with pytest.raises(ConfigError, match=r"unknown top-level key 'techer'.*did you mean 'teacher'"):
        parse({"techer": {}})
    with pytest.raises(ConfigError, match=r"teacher\.train\.lr"):
        parse({"teacher": {"train": {"lr": -1}}})


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError, match=r"distill\.runs\.x\.method: unknown method 'vanila_kd'.*"
                                          r"did you mean 'vanilla_kd'.*known: alp_kd, .*finetune, .*pea_kd, pkd, .*"):
        parse({"distill": {"runs": {"x": {"method": "vanila_kd"}}}})


def test_run_train_overrides_merge_onto_shared_train():
    params = parse({"distill": {"train": {"lr": 1e-4, "epochs": 3},
                                       "runs": {"a": {"method": "finetune", "train": {"lr": 2e-5}}}}})
    cfg = params.run_train_config("a")
    assert cfg.lr == 2e-5 and cfg.epochs == 3
    with pytest.raises(ConfigError, match=r"distill\.runs\.b\.train\.lrr: unknown key"):
        parse({"distill": {"runs": {"b": {"method": "finetune", "train": {"lrr": 1}}}}})


def test_student_layer_list_must_match_depth():
    with pytest.raises(ConfigError, match=r"student"):
        parse({"student": {"num_layers": 3, "layers": [0, 1]}})
    with pytest.raises(ConfigError, match=r"student"):
        parse({"student": {"num_layers": 2, "layers": [3, 1]}})


def test_malformed_and_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: the params file is missing"):
        load_params(tmp_path / "missing.yaml")
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(bad)


def test_phase_overrides_apply_per_phase_and_unknown_phases_fail():
    params = parse({"distill": {"train": {"lr": 1e-4}, "runs": {"tb": {
        "method": "tinybert", "train": {"epochs": 3}, "phases": {"pred": {"lr": 3e-5}}}}}})
    ild = params.run_train_config("tb", "ild", {"schedule": "constant", "select": "last"})
    pred = params.run_train_config("tb", "pred", {})
    assert (ild.lr, ild.epochs, ild.schedule, ild.select) == (1e-4, 3, "constant", "last")
    assert (pred.lr, pred.epochs, pred.schedule) == (3e-5, 3, "linear")
    with pytest.raises(ConfigError, match=r"distill\.runs\.tb\.phases: tinybert has no phase 'prd'.*ild, pred"):
        parse({"distill": {"runs": {"tb": {"method": "tinybert", "phases": {"prd": {}}}}}})
    with pytest.raises(ConfigError, match=r"distill\.runs\.tb\.phases\.ild.*lr"):
        parse({"distill": {"runs": {"tb": {"method": "tinybert", "phases": {"ild": {"lr": -1}}}}}})


@pytest.mark.parametrize("student_layers, run, message", [
    (3, {"method": "pkd", "teacher_layers": [2, 9]}, r"distill\.runs\.bad \(pkd\).*teacher_layers.*9"),
    (1, {"method": "pkd"}, r"distill\.runs\.bad \(pkd\).*layer"),
    (3, {"method": "rail_kd_l", "exclude_last": 4}, r"distill\.runs\.bad \(rail_kd_l\).*exclude_last"),
    (3, {"method": "rail_kd_c", "projection_dim": 100}, r"distill\.runs\.bad \(rail_kd_c\).*projection_dim"),
])
def test_preflight_rejects_mappings_that_cannot_fit_the_models(student_layers, run, message, minilm_path):
    """Checked against the real teacher's shapes before any stage loads weights."""
    from kdpipe.pipeline.preflight import preflight
    params = parse({"student": {"num_layers": student_layers}, "distill": {"runs": {"bad": run}}})
    with pytest.raises(ConfigError, match=message):
        preflight(params)


def test_student_init_and_sps_spellings():
    params = parse({"student": {"init_from": "pretrained", "sps": True}})  # init_from: the old name
    assert params.student.init == "pretrained" and params.student.sps.shuffle == "upper_swap"
    assert params.student.effective_layers == 6
    assert parse({"student": {"sps": False}}).student.sps is None
    with pytest.raises(ConfigError, match=r"student\.sps\.shuffle"):
        parse({"student": {"sps": {"shuffle": "sideways"}}})


def test_pea_kd_preset_student_and_run_overrides():
    params = parse({"student": {"num_layers": 2}, "distill": {"runs": {
        "pea": {"method": "pea_kd"},
        "no_sps": {"method": "pea_kd", "student": {"sps": None}},
        "no_ptp": {"method": "pea_kd", "student": {"init": "teacher"}},
        "kd_ptp": {"method": "vanilla_kd", "student": {"init": "ptp", "num_layers": 3}}}}})
    pea = run_student(params, "pea")
    assert (pea.num_layers, pea.init, pea.sps.shuffle) == (2, "ptp", "upper_swap")  # preset over `student`
    assert run_student(params, "no_sps").sps is None and run_student(params, "no_ptp").init == "teacher"
    assert run_student(params, "kd_ptp").num_layers == 3 and run_student(params, "kd_ptp").sps is None
    method = params.distill.runs["pea"]
    assert method.method_params == {}  # `student:` is not a method param


def test_bad_run_student_override_names_the_run():
    with pytest.raises(ConfigError, match=r"distill\.runs\.p\.student\.init"):
        parse({"distill": {"runs": {"p": {"method": "pea_kd", "student": {"init": "ptpp"}}}}})
    with pytest.raises(ConfigError, match=r"ptp\.t1"):
        parse({"ptp": {"t1": 1.5}})


def test_preflight_maps_an_sps_student_with_its_effective_depth(minilm_path):
    from kdpipe.methods.registry import build_run_method
    from kdpipe.pipeline.preflight import preflight
    from transformers import AutoConfig
    params = parse({"distill": {"runs": {"pea": {"method": "pea_kd"}, "bad": {
        "method": "pkd", "teacher_layers": [2, 4], "student": {"sps": True}}}}})
    with pytest.raises(ConfigError, match=r"distill\.runs\.bad \(pkd\).*teacher_layers"):
        preflight(params)  # 6 effective layers: 5 patient layers, not 2
    pea = build_run_method(params, "pea", AutoConfig.from_pretrained(minilm_path), regression=False)
    assert [ts[0] for _, ts in pea.mapping.pairs()] == [1, 2, 3, 4, 5]
    assert (pea.params.ce_weight, pea.params.kd_weight, pea.params.temperature, pea.params.beta) == (0.3, 0.7, 10, 100)
    with pytest.raises(ConfigError, match=r"distill\.runs\.deep.*num_layers: 7"):
        preflight(parse({"distill": {"runs": {"deep": {"method": "finetune", "student": {"num_layers": 7}}}}}))


def test_preflight_validates_student_heads_and_supplementary_inputs(minilm_path, tmp_path):
    """MiniLM: width 384, 12 heads.  A student head count must divide 384; the MLKD MHA-split also
    cuts the teacher's width into the student's heads; supplementary inputs must exist."""
    from kdpipe.methods.registry import build_run_method
    from kdpipe.pipeline.preflight import preflight
    from transformers import AutoConfig
    params = parse({"distill": {"runs": {"m": {"method": "mlkd", "student": {"attention_heads": 5}}}}})
    with pytest.raises(ConfigError, match=r"distill\.runs\.m \(mlkd\): student\.attention_heads: 5 does not divide"
                                          r".*384; use one of \[1, 2, 3, 4, 6, 8, 12, 16"):
        preflight(params)
    params = parse({"distill": {"runs": {"m": {"method": "mlkd", "student": {"attention_heads": 3}},
                                                "ah": {"method": "cr_ild", "preset": "ah_cr",
                                                       "student": {"attention_heads": 6}}}}})
    with pytest.raises(ConfigError, match=r"distill\.runs\.ah \(cr_ild\).*ah compares attention maps head by head"):
        preflight(params)
    mlkd = build_run_method(params, "m", AutoConfig.from_pretrained(minilm_path), regression=False)
    assert (mlkd.shapes.student.heads, mlkd.shapes.teacher.heads) == (3, 12)
    assert mlkd.describe()["mha_split_width"] == {"student": 128, "teacher": 128}
    assert [ts[0] for _, ts in mlkd.mapping.pairs()] == [2, 4, 6]
    missing = parse({"distill": {"runs": {"c": {"method": "cr_ild",
                                                       "supplementary": {"file": str(tmp_path / "no.txt")}}}}})
    with pytest.raises(ConfigError, match=r"distill\.runs\.c\.supplementary\.file: .*no\.txt not found"):
        preflight(missing)
    unknown = parse({"distill": {"runs": {"c": {"method": "cr_ild", "supplementary": {"task": "colaa"}}}}})
    with pytest.raises(ConfigError, match=r"distill\.runs\.c\.supplementary\.task: .*colaa"):
        preflight(unknown)


@pytest.mark.parametrize("suite", sorted(p.name for p in (REPO / "suites").glob("*.yaml")))
def test_every_suite_file_is_valid_params(suite):
    params = check_runs(load_params(REPO / "suites" / suite))
    assert params.distill.runs and params.ptp and params.distill.teacher_cache  # DVC needs every listed section


def test_the_default_first_run_stays_small():
    """The first command is the product's first impression: a few students that show the range."""
    params = check_runs(load_params(REPO / "params.yaml"))
    methods = {run.method for run in params.distill.runs.values()}
    assert len(params.distill.runs) <= 6 and {"finetune", "vanilla_kd", "pea_kd"} <= methods


def test_bf16_on_a_cpu_without_onednn_bf16_is_named_by_its_key():
    from kdpipe.pipeline.preflight import precision_notes

    params = parse_params({"distill": {"train": {"mixed_precision": "bf16"},
                                       "runs": {"kd": {"method": "vanilla_kd"},
                                                "ft": {"method": "finetune", "train": {"mixed_precision": "no"}}}}})
    notes = precision_notes(params, cpu_bf16=False)
    assert [n.split(":")[0] for n in notes] == ["distill.train.mixed_precision"]  # ft's own train: says no
    assert "slower than fp32" in notes[0]
    assert precision_notes(params, cpu_bf16=True) == []
