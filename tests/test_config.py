import pytest

from kdpipe.config import ConfigError, load_params, parse_params

from conftest import REPO


def test_shipped_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.task.name == "tweets" and params.teacher.model == "minilm"
    assert params.student.num_layers == 3
    assert "vanilla_kd" in params.distill.runs


def test_unknown_key_is_named_with_its_path_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"distill\.runs\.kd\.temprature: unknown key"):
        parse_params({"distill": {"runs": {"kd": {"method": "vanilla_kd", "temprature": 2}}}})
    with pytest.raises(ConfigError, match=r"unknown top-level key 'techer'.*did you mean 'teacher'"):
        parse_params({"techer": {}})
    with pytest.raises(ConfigError, match=r"teacher\.train\.lr"):
        parse_params({"teacher": {"train": {"lr": -1}}})


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError, match=r"distill\.runs\.x\.method: unknown method 'vanila_kd'.*"
                                          r"did you mean 'vanilla_kd'.*known: finetune, vanilla_kd"):
        parse_params({"distill": {"runs": {"x": {"method": "vanila_kd"}}}})


def test_run_train_overrides_merge_onto_shared_train():
    params = parse_params({"distill": {"train": {"lr": 1e-4, "epochs": 3},
                                       "runs": {"a": {"method": "finetune", "train": {"lr": 2e-5}}}}})
    cfg = params.run_train_config("a")
    assert cfg.lr == 2e-5 and cfg.epochs == 3
    with pytest.raises(ConfigError, match=r"distill\.runs\.b\.train\.lrr: unknown key"):
        parse_params({"distill": {"runs": {"b": {"method": "finetune", "train": {"lrr": 1}}}}})


def test_student_layer_list_must_match_depth():
    with pytest.raises(ConfigError, match=r"student"):
        parse_params({"student": {"num_layers": 3, "layers": [0, 1]}})
    with pytest.raises(ConfigError, match=r"student"):
        parse_params({"student": {"num_layers": 2, "layers": [3, 1]}})


def test_malformed_and_unreadable_files_name_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params\.yaml: not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_params(tmp_path / "missing.yaml")
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(bad)
