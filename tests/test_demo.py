import json
from pathlib import Path
from types import SimpleNamespace

import mdtraj as md
import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tcbm import backmap, pipeline
from tcbm.backmap import RolloutSettings
from tcbm.demo import run_demo

MINIATURE = [
    "simulate.train_ps=[40,40]", "simulate.test_ps=40",
    "train_overrides=[" + ",".join(f"'{o}'" for o in (
        "trainer.max_steps=3", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "model.network.width=4", "model.network.latent_dim=2",
        "model.gmm.components=2", "data.batch_size=8")) + "]",
    "backmap.refine_steps=2", "settings.n_clusters=6", "settings.bayesian_samples=5", "settings.msm_lag=1", "settings.msm_lags=[1,2]",
]


def test_miniature_demo_runs_every_stage_and_reuses_them(tmp_path, capsys, monkeypatch):
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        cfg = compose("demo", overrides=[f"out={tmp_path}", *MINIATURE])
        report = run_demo(cfg)
        metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
        assert set(metrics["datasets"]) == {"reference", "tcbm", "tcbm + refinement (2 MD steps)", "frame-based cVAE",
                                            "nearest-neighbour"}
        refined = json.loads((tmp_path / "backmapped_model_history1_refined2" / "test.json").read_text())
        plain = json.loads((tmp_path / "backmapped_model_history1" / "test.json").read_text())
        assert refined["refinement_steps"] == 2 and plain["refinement_steps"] == 0
        # the default CG projection puts every frame on the CG, and refinement keeps it there
        assert refined["cg_rmsd_nm"] < 1e-4 and plain["cg_rmsd_nm"] < 1e-4
        assert metrics["datasets"]["tcbm"]["frames"] == 40
        assert "![Free-energy surfaces](fes.png)" in report.read_text()
        stamp = (tmp_path / "model_history1" / "model.pt").stat().st_mtime
        capsys.readouterr()
        run_demo(cfg)  # second run reuses data and models
        assert "reusing" in capsys.readouterr().out
        assert (tmp_path / "model_history1" / "model.pt").stat().st_mtime == stamp
        changed = compose("demo", overrides=[f"out={tmp_path}", *MINIATURE, "backmap.seed=1"])
        changed.train_overrides = [*changed.train_overrides[:-1], "data.batch_size=6"]
        import tcbm.training

        monkeypatch.setattr(tcbm.training, "RECIPE", tcbm.training.RECIPE + 1)  # tcbm train makes more now
        run_demo(changed)  # another training setting and another rollout seed: nothing stale is served
        out = capsys.readouterr().out
        assert out.count("retraining") == 2 and "recomputing" in out and "reusing" not in out
        assert out.count(f"recipe: {tcbm.training.RECIPE - 1} -> {tcbm.training.RECIPE}") == 2
        assert json.loads((tmp_path / "backmapped_model_history1" / "test.json").read_text())["seed"] == 1


def test_a_held_out_seed_shared_with_a_training_run_is_refused_before_any_work(tmp_path):
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        cfg = compose("demo", overrides=[f"out={tmp_path}", *MINIATURE, "simulate.train_seed=11",
                                         "simulate.test_seed=12"])
        with pytest.raises(ValueError, match="test_seed=12 is also the seed of a training run"):
            run_demo(cfg)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("accelerator, workers", [("cpu", 2), ("gpu", 1)])
def test_trainings_run_side_by_side_only_on_the_cpu(tmp_path, monkeypatch, accelerator, workers):
    used = []
    monkeypatch.setattr(pipeline, "run_in_processes", lambda function, calls, n: used.append((len(calls), n)))
    configs = [OmegaConf.create({"out": str(tmp_path / f"model{k}"), "trainer": {"accelerator": accelerator}})
               for k in range(2)]
    assert pipeline.train_configs(configs, workers=2) == [tmp_path / "model0" / "model.pt",
                                                          tmp_path / "model1" / "model.pt"]
    assert used == [(2, workers)]


def test_variants_train_one_more_tcbm_each_with_their_overrides(tmp_path, monkeypatch):
    trained = []

    def record(configs, workers, force):
        trained.extend(configs)
        return [Path(cfg.out) / "model.pt" for cfg in configs]

    monkeypatch.setattr(pipeline, "train_configs", record)
    monkeypatch.setattr(pipeline.BackmapModel, "load", lambda path: SimpleNamespace(
        metadata={"train_wall_s": 1.0, "steps": 3}))
    variant = pipeline.parse_variant("tcbm balanced=data.balance.power=0.5 data.balance.bins=10")
    assert variant == ("tcbm balanced", ["data.balance.power=0.5", "data.balance.bins=10"])
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        paths, timings = pipeline.train_models(tmp_path, "adp_quick", [tmp_path / "train.xtc"],
                                               ["trainer.max_steps=3"], variants=dict([variant]))
        with pytest.raises(ValueError, match="'tcbm' is taken"):
            pipeline.train_models(tmp_path, "adp_quick", [tmp_path / "train.xtc"], [], variants={"tcbm": []})
    assert list(paths) == ["tcbm", "frame-based cVAE", "tcbm balanced"]
    assert paths["tcbm balanced"] == tmp_path / "variant_tcbm_balanced" / "model.pt"
    plain, frame_based, balanced = trained
    assert (balanced.data.balance.power, balanced.data.balance.bins, balanced.model.network.history) == (0.5, 10, 1)
    assert plain.data.balance.power == 0.0 and frame_based.model.network.history == 0
    assert all(cfg.trainer.max_steps == 3 for cfg in trained) and timings["train_steps[tcbm balanced]"] == 3
    with pytest.raises(ValueError, match="no label"):
        pipeline.parse_variant("=data.balance.power=0.5")


def test_rollout_variants_backmap_a_model_again_with_other_settings(tmp_path, tiny_model, adp_traj):
    label, model, changes = pipeline.parse_rollout_variant("tcbm, mean latent=tcbm:latent_temperature=0 rotor_hops=false")
    assert (label, model, changes) == ("tcbm, mean latent", "tcbm", {"latent_temperature": 0, "rotor_hops": False})
    for bad in ("x=tcbm:", "x=tcbm:seeds=1", "=tcbm:seed=1", "x=tcbm:seed"):
        with pytest.raises(ValueError, match="rollout variant"):
            pipeline.parse_rollout_variant(bad)
    path = tiny_model.save(tmp_path / "history1" / "model.pt")
    test = tmp_path / "test.xtc"
    md.load(str(adp_traj[0]), top=str(adp_traj[1]))[:12].save_xtc(str(test))
    settings = RolloutSettings(progress=False)
    with pytest.raises(ValueError, match="needs one of the models"):
        pipeline.backmap_with_baseline({"tcbm": path}, [test], adp_traj[1], tmp_path, settings, "cpu",
                                       rollout_variants=[("x", "frame-based cVAE", {"seed": 1})])
    _, datasets, _ = pipeline.backmap_with_baseline({"tcbm": path}, [test], adp_traj[1], tmp_path, settings, "cpu",
                                                    rollout_variants=[(label, model, changes)])
    assert list(datasets) == ["tcbm", "tcbm, mean latent", "nearest-neighbour"]
    summary = json.loads((tmp_path / "backmapped_history1_variant_tcbm__mean_latent" / "test.json").read_text())
    assert summary["fingerprint"]["settings"]["latent_temperature"] == 0
    assert not np.allclose(datasets["tcbm"][0].xyz, datasets["tcbm, mean latent"][0].xyz)


def test_an_added_option_at_its_off_value_keeps_older_fingerprints(tmp_path, adp_traj):
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        cfg = pipeline.training_config(tmp_path, "adp_quick", 1, adp_traj[0], [])
    assert cfg.model.loss.chirality_margin == 0.0  # today's default: the option off
    older = OmegaConf.to_container(cfg)
    del older["model"]["loss"]["chirality_margin"], older["model"]["loss"]["energy_max_pull"]  # made before them
    fingerprint = pipeline.training_fingerprint(cfg)
    assert pipeline.training_fingerprint(OmegaConf.create(older)) == fingerprint
    cfg.model.loss.chirality_margin = 0.5  # the option on: a different model
    assert pipeline.differences(fingerprint, pipeline.training_fingerprint(cfg))[0].startswith("config:")


def test_a_model_selected_on_rollouts_made_otherwise_is_stale(tmp_path, adp_traj, monkeypatch):
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        cfg = pipeline.training_config(tmp_path, "adp_quick", 1, adp_traj[0], [])
    fingerprint = pipeline.training_fingerprint(cfg)
    monkeypatch.setattr(backmap, "ROLLOUT_RECIPE", backmap.ROLLOUT_RECIPE + 1)  # rollouts make other frames now
    assert pipeline.differences(fingerprint, pipeline.training_fingerprint(cfg)) == [
        f"rollout_recipe: {backmap.ROLLOUT_RECIPE - 1} -> {backmap.ROLLOUT_RECIPE}"]
