"""`edgekit models` and `edgekit summary`."""


def test_models_table_lists_measured_facts(cli):
    res = cli("models")
    assert res.exit_code == 0
    out = res.stdout
    for name in ("resnext50_32x4d", "densenet121", "textbook_densenet"):
        assert name in out


def test_models_facts_match_published_numbers():
    from edgekit.models.zoo import describe_models

    facts = {f.name: f for f in describe_models()}
    # docs/field-notes.md: torchvision at 224x224
    assert round(facts["resnet18"].macs / 1e9, 2) == 1.81 and round(facts["resnet18"].params / 1e6, 1) == 11.7
    assert round(facts["resnet50"].macs / 1e9, 2) == 4.09
    assert round(facts["resnext50_32x4d"].macs / 1e9, 2) == 4.23 and facts["resnext50_32x4d"].grouped_convs == 16
    assert round(facts["densenet121"].macs / 1e9, 2) == 2.83 and facts["densenet121"].concats == 58
    assert facts["textbook_densenet"].concats == 16


def test_summary_is_the_torchinfo_table(cli):
    res = cli("summary", "resnet18")
    assert res.exit_code == 0
    assert "BasicBlock: 2-1" in res.stdout
    assert "[1, 64, 112, 112]" in res.stdout and "9,408" in res.stdout
    assert "Total params: 11,689,512" in res.stdout


def test_summary_unknown_model(cli):
    res = cli("summary", "resnet19")
    assert res.exit_code == 2 and "did you mean resnet18" in res.stderr


def test_model_facts_are_measured_once_and_cached_by_what_they_depend_on(tmp_path, monkeypatch):
    # `edgekit models` in under a second after the first run: the cache holds exactly what a fresh measurement
    # gives, is keyed by torch/torchvision and the model sources, and a damaged one is measured again
    import edgekit.models.zoo as zoo

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    fresh = zoo.describe_models()
    (cache,) = tmp_path.glob("model-facts-*.json")
    assert zoo._facts_key() in cache.name
    monkeypatch.setattr(zoo, "measure_models", lambda: (_ for _ in ()).throw(AssertionError("measured again")))
    assert zoo.describe_models() == fresh
    cache.write_text("{not json")
    monkeypatch.undo()
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    assert zoo.describe_models() == fresh and cache.read_text().startswith("[")
