"""The Flower engine's federation config: local Ray, or joining an existing cluster."""


def test_federation_config_joins_an_existing_ray_cluster_without_a_cpu_count(monkeypatch):
    from simulations.engine_flower import federation_config

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert federation_config(5, 2) == ("num-supernodes=5 client-resources-num-cpus=1 "
                                       "client-resources-num-gpus=0.0 init-args-num-cpus=2")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert "init-args-num-cpus" not in federation_config(5, 2)
