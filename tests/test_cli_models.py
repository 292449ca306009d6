"""`edgekit models` and `edgekit summary`."""


def test_models_table_lists_measured_facts(cli):
    res = cli("models")
    assert res.exit_code == 0
    out = res.stdout
    for name in ("resnext50_32x4d", "densenet121", "textbook_densenet"):
        assert name in out


def test_models_facts_match_published_numbers():
    from edgekit.zoo import describe_models

    facts = {f.name: f for f in describe_models()}
    # field-notes: torchvision at 224x224
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
