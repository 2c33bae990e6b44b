"""The Flower engine's federation config: local Ray, or joining an existing cluster."""


def test_federation_config_joins_an_existing_ray_cluster_without_a_cpu_count(monkeypatch):
    from simulations.engine_flower import federation_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert federation_config(5, 2) == ("num-supernodes=5 client-resources-num-cpus=1 "
                                       "client-resources-num-gpus=0.0 init-args-num-cpus=2")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert "init-args-num-cpus" not in federation_config(5, 2)


def test_convert_row_hand_computed():
    from simulations.engine_flower import convert_row

    row = {"round": 2, "partition_ids": [0, 1, 2, 3], "malicious_in_round": [3],
           "accepted": [1, 1, 0, 0], "update_norms": [1.0, 3.0, 5.0, 9.0], "accuracy": 0.5}
    out = convert_row(row)
    # rejected {2, 3}, malicious {3}: precision 1/2, recall 1, FPR 1/3 (one of 3 benign)
    assert (out["precision"], out["recall"]) == (0.5, 1.0)
    assert abs(out["fpr"] - 1 / 3) < 1e-12
    assert (out["norm_benign"], out["norm_malicious"], out["norm_max"]) == (3.0, 9.0, 9.0)
    assert out["malicious_in_round"] == [3] and out["accuracy"] == 0.5
    bare = convert_row({"round": 1, "partition_ids": [0, 1], "malicious_in_round": []})
    assert bare["norm_max"] is None and bare["accepted"] is None
