"""Federation building blocks without a Flower run: settings, screening, strategies, checkpoints,
cycle data, forgetting, certificates and keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from federation import protocol
from federation.checkpoint import CheckpointStore
from federation.config import STRATEGIES, FederationConfig, load_federate_params
from federation.continual import forgetting_summary, next_version
from federation.deployment import init_pki, make_node_keys, superlink_command, supernode_command
from federation.exceptions import (
    CheckpointError,
    DeploymentError,
    FederationConfigError,
    FederationError,
)
from federation.faults import parse_fault
from federation.screening import Update, screen_updates
from federation.site import load_site, validation_split
from federation.strategy import build_strategy
from federation.task import (
    decode_train_config,
    encode_train_config,
    exchanged_state,
    layout_of,
    pack,
    packed_shapes,
    train_config_from_params,
    unpack,
)
from tests._pipeline import tiny_config

# -- settings -------------------------------------------------------------------------------


def test_config_reads_both_spellings_and_refuses_unknown_keys(tmp_path: Path) -> None:
    config = FederationConfig.from_mapping({"local-epochs": 2, "proximal_mu": "0.1"})
    assert (config.local_epochs, config.proximal_mu) == (2, 0.1)
    assert FederationConfig.from_run_config(config.to_run_config()) == config
    with pytest.raises(FederationConfigError, match="unknown setting"):
        FederationConfig.from_mapping({"roundz": 3})
    with pytest.raises(FederationConfigError, match="strategy"):
        FederationConfig(strategy="fedsgd")
    params = tmp_path / "params.yaml"
    params.write_text("federate:\n  rounds: 7\n  strategy: krum\nother: 1\n")
    assert load_federate_params(params).rounds == 7
    assert load_federate_params(tmp_path / "absent.yaml") == FederationConfig()


def test_the_repository_params_and_pyproject_defaults_are_valid() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    load_federate_params(root / "params.yaml")
    app = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "federation.server_app:app",
        "clientapp": "federation.client_app:app",
    }
    FederationConfig.from_run_config(app["config"])


def test_train_recipe_round_trips_and_reads_a_nested_params_block(tmp_path: Path) -> None:
    recipe = tiny_config()
    assert decode_train_config(encode_train_config(recipe)) == recipe
    params = tmp_path / "params.yaml"
    params.write_text(
        "train:\n  encoder: residual\n  features: [8, 16, 16, 32, 32]\n  subunits: [1, 1, 1, 1, 1]\n"
        "  spec: {crop_size: 48, flip_tta: false, refine_passes: 0}\n"
    )
    loaded = train_config_from_params(params)
    assert loaded.features == (8, 16, 16, 32, 32) and loaded.spec.crop_size == 48
    with pytest.raises(FederationConfigError):
        decode_train_config("{not json")


def test_faults_parse_and_act(tiny_world) -> None:
    from data_registry import Registry
    from federation.exceptions import InjectedFaultError
    from models.samples import samples_from_registry

    assert parse_fault(None) is None
    assert parse_fault("scale:50").value == 50.0
    assert parse_fault("exit:2").kind == "exit"
    for bad in ("explode", "scale", "scale:x"):
        with pytest.raises(FederationConfigError):
            parse_fault(bad)
    samples = samples_from_registry(Registry(tiny_world.registries[0]))[:4]
    flipped = parse_fault("flip-labels").flip(samples)
    assert [s.label for s in flipped] == [1 - s.label for s in samples]
    arrays = {"w": np.ones(3, np.float32)}
    assert parse_fault("scale:50").corrupt(arrays)["w"].tolist() == [50.0] * 3
    assert np.isnan(parse_fault("nan").corrupt(arrays)["w"]).all()
    parse_fault("crash:2").maybe_die(1)
    with pytest.raises(InjectedFaultError):
        parse_fault("crash:2").maybe_die(2)


# -- screening ------------------------------------------------------------------------------


def _weights(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"a": rng.normal(size=(4, 3)).astype(np.float32) * scale, "b": np.ones(5, np.float32)}


def test_screening_drops_nan_boosted_malformed_and_weightless_updates() -> None:
    rng = np.random.default_rng(0)
    reference = _weights(rng)
    honest = [
        {k: v + 0.01 * rng.normal(size=v.shape).astype(np.float32) for k, v in reference.items()}
        for _ in range(3)
    ]
    boosted = {k: v * 50 for k, v in honest[0].items()}
    nan = {k: np.full_like(v, np.nan) for k, v in honest[0].items()}
    malformed = {"a": np.zeros((3, 3), np.float32), "b": np.ones(5, np.float32)}
    updates = [Update(i, f"site-{i}", arrays, 10.0) for i, arrays in enumerate(honest)]
    updates += [
        Update(7, "boost", boosted, 10.0),
        Update(8, "nan", nan, 10.0),
        Update(9, "shape", malformed, 10.0),
        Update(10, "weightless", honest[1], 0.0),
    ]
    report = screen_updates(reference, updates, norm_factor=5.0)
    assert report.kept == [0, 1, 2]
    reasons = {d.site_id: d.reason for d in report.dropped}
    assert reasons == {
        "boost": "norm",
        "nan": "non-finite",
        "shape": "structure",
        "weightless": "weight",
    }
    assert report.median_norm is not None and report.median_norm > 0


def test_screening_needs_three_updates_to_judge_norms() -> None:
    rng = np.random.default_rng(1)
    reference = _weights(rng)
    two = [Update(0, "a", _weights(rng), 1.0), Update(1, "b", _weights(rng, 50.0), 1.0)]
    assert screen_updates(reference, two, norm_factor=5.0).kept == [0, 1]


# -- strategies on synthetic replies --------------------------------------------------------


class _NodesOnly(Grid):
    """The part of a Grid a strategy's configure_* uses: the connected node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)

    def set_run(self, run):
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs):
        raise NotImplementedError

    def push_messages(self, messages):
        raise NotImplementedError

    def pull_messages(self, message_ids):
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        raise NotImplementedError


@pytest.fixture()
def task_identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


def _reply(request: Message, site: str, arrays: dict[str, np.ndarray], n: int) -> Message:
    content = RecordDict(
        {
            protocol.ARRAYS: pack(arrays),
            protocol.METRICS: MetricRecord(
                {k: 1.0 for k in protocol.TRAIN_METRIC_KEYS} | {protocol.WEIGHT: n}
            ),
            protocol.SITE: ConfigRecord({"site-id": site, "registry-version": 1}),
        }
    )
    return Message(content=content, reply_to=request)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_screens_then_aggregates_and_records(name: str, task_identity) -> None:
    rng = np.random.default_rng(2)
    reference = _weights(rng)
    config = FederationConfig(
        strategy=name, min_clients=2, num_malicious=0 if name == "bulyan" else 1
    )
    layout = layout_of(reference)
    strategy = build_strategy(config, num_sites=6, layout=layout, round_offset=4)
    requests = list(
        strategy.configure_train(1, pack(reference), ConfigRecord(), _NodesOnly(list(range(1, 7))))
    )
    assert all(m.content["config"]["server-round"] == 5 for m in requests)
    honest = [
        {k: v + 0.01 * rng.normal(size=v.shape).astype(np.float32) for k, v in reference.items()}
        for _ in range(4)
    ]
    replies = [_reply(requests[i], f"site-{i}", honest[i], 10 + i) for i in range(4)]
    replies.append(_reply(requests[4], "boost", {k: v * 50 for k, v in honest[0].items()}, 10))
    replies.append(Message(Error(code=0, reason="client died"), reply_to=requests[5]))
    odd = _reply(requests[5], "odd", honest[0], 10)
    odd.content["extra"] = MetricRecord({"case-0001-prob": 0.9})  # a per-case value: refused
    replies.append(odd)
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    merged = unpack(arrays, layout)
    for key, value in merged.items():
        stack = np.stack([h[key] for h in honest])
        assert np.all(value >= stack.min(0) - 1e-5) and np.all(value <= stack.max(0) + 1e-5)
    record = strategy.records[5]
    assert record.sites == ["site-0", "site-1", "site-2", "site-3"]
    assert sorted((d["site"], d["reason"]) for d in record.dropped) == [
        ("boost", "norm"),
        ("odd", "structure"),
    ]
    assert len(record.failed) == 1 and "client died" in record.failed[0]["reason"]
    if name == "fedprox":
        assert requests[0].content["config"]["proximal-mu"] == config.proximal_mu


def test_too_few_usable_updates_keep_the_global_model(task_identity) -> None:
    rng = np.random.default_rng(3)
    reference = _weights(rng)
    strategy = build_strategy(FederationConfig(min_clients=3), num_sites=3,
                              layout=layout_of(reference))  # fmt: skip
    requests = list(
        strategy.configure_train(1, pack(reference), ConfigRecord(), _NodesOnly([1, 2, 3]))
    )
    replies = [_reply(requests[0], "a", reference, 5), _reply(requests[1], "b", reference, 5)]
    assert strategy.aggregate_train(1, replies) == (None, None)
    assert strategy.records[1].aggregated is False


def test_hospitals_validate_locally_in_the_last_round_only(task_identity) -> None:
    reference = _weights(np.random.default_rng(3))
    strategy = build_strategy(FederationConfig(rounds=3), num_sites=2, layout=layout_of(reference))
    asked = {
        r: {
            bool(m.content["config"]["local-validation"])
            for m in strategy.configure_train(
                r, pack(reference), ConfigRecord(), _NodesOnly([1, 2])
            )
        }
        for r in (1, 2, 3)
    }
    assert asked == {1: {False}, 2: {False}, 3: {True}}


def test_metric_aggregation_skips_nan_and_sums_counts() -> None:
    records = [
        RecordDict(
            {protocol.METRICS: MetricRecord({protocol.WEIGHT: 10, "val-auc": 0.8, "val-cases": 3})}
        ),
        RecordDict(
            {
                protocol.METRICS: MetricRecord(
                    {protocol.WEIGHT: 30, "val-auc": math.nan, "val-cases": 4}
                )
            }
        ),
    ]
    out = protocol.aggregate_metrics(records, protocol.WEIGHT)
    assert out["val-auc"] == pytest.approx(0.8)
    assert out["val-cases"] == 7 and out[protocol.WEIGHT] == 40 and out["clients"] == 2


# -- checkpoints ----------------------------------------------------------------------------


def test_checkpoints_round_trip_prune_and_detect_corruption(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", keep=2)
    assert store.latest() is None
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for round_ in range(4):
        store.save(
            round_, {"w": arrays["w"] + round_}, [{"round": r} for r in range(round_ + 1)], {"x": 1}
        )
    latest = store.latest()
    assert latest is not None and latest.round == 3
    np.testing.assert_array_equal(latest.arrays["w"], arrays["w"] + 3)
    assert [row["round"] for row in latest.history] == [0, 1, 2, 3]
    assert sorted(p.name for p in store.directory.glob("*.npz")) == [
        "round-0002.npz",
        "round-0003.npz",
    ]
    (store.directory / "round-0003.npz").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="sha256"):
        store.latest()
    store.clear()
    assert store.latest() is None


# -- cycles and forgetting ------------------------------------------------------------------


def test_forgetting_and_backward_transfer() -> None:
    summary = forgetting_summary([[0.8, None, None], [0.7, 0.85, None], [0.6, 0.8, 0.9]])
    assert summary["forgetting"] == pytest.approx(((0.8 - 0.6) + (0.85 - 0.8)) / 2)
    assert summary["bwt"] == pytest.approx(((0.6 - 0.8) + (0.8 - 0.85)) / 2)
    assert forgetting_summary([[0.7]])["bwt"] is None
    assert next_version("1.2.3", 4) == "1.3.0" and next_version(None, 0) == "0.1.0"


@pytest.fixture(scope="module")
def two_version_registry(tiny_world, tmp_path_factory) -> Path:
    """site-a's phantom export ingested in two halves: versions 1 and 2."""
    from data_registry import Exclusion, ingest
    from data_registry.importers import get_importer

    root = tmp_path_factory.mktemp("versions") / "site-a"
    candidates = list(get_importer("phantom")(tiny_world.phantom / "site-a"))
    exclusion = Exclusion.load(tiny_world.locked / "exclusion.json")
    half = len(candidates) // 2
    for part in (candidates[:half], candidates[half:]):
        ingest(part, root, site_id="site-a", source="phantom:site-a", exclusion=exclusion)
    return root


def test_a_cycle_trains_on_new_cases_plus_rehearsal_with_a_stable_validation_split(
    two_version_registry: Path,
) -> None:
    from data_registry import Registry

    registry = Registry(two_version_registry)
    assert registry.version == 2
    everything = load_site(
        two_version_registry, since=None, rehearsal_size=0, val_fraction=0.3, seed=0, cycle=0
    )
    cycle1 = load_site(
        two_version_registry,
        since={"site-a": 1},
        rehearsal_size=2,
        val_fraction=0.3,
        seed=0,
        cycle=1,
    )
    new_ids = {e.case.case_id for e in registry.eligible(since=1)}
    train_ids = [s.case_id for s in cycle1.train]
    assert cycle1.new_cases == len([i for i in train_ids if i in new_ids]) > 0
    assert cycle1.rehearsal_cases == 2 and len(train_ids) == cycle1.new_cases + 2
    assert {s.case_id for s in cycle1.val} == {s.case_id for s in everything.val}
    assert not {s.case_id for s in cycle1.val} & set(train_ids)
    # adding cases never moves an old case between training and validation
    old = validation_split(
        [s for s in everything.train + everything.val if s.case_id not in new_ids], 0.3, 0
    )
    assert {s.case_id for s in old[1]} <= {s.case_id for s in everything.val}
    naive = load_site(
        two_version_registry,
        since={"site-a": 1},
        rehearsal_size=0,
        val_fraction=0.3,
        seed=0,
        cycle=1,
    )
    assert naive.rehearsal_cases == 0 and naive.new_cases == cycle1.new_cases
    with pytest.raises(FederationError):
        load_site(
            two_version_registry,
            since={"site-a": 5},
            rehearsal_size=0,
            val_fraction=0.3,
            seed=0,
            cycle=1,
        )


def test_exchanged_weights_are_the_floating_point_state() -> None:
    from models.train import build_model

    model = build_model(tiny_config())
    arrays = exchanged_state(model)
    assert arrays and all(np.issubdtype(v.dtype, np.floating) for v in arrays.values())
    assert not any(k.endswith("num_batches_tracked") for k in arrays)


# -- certificates and keys ------------------------------------------------------------------


def test_pki_issues_a_p384_server_certificate_signed_by_the_ca(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki", hosts=["localhost", "127.0.0.1", "vendor.example"])
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert isinstance(server.public_key().curve, ec.SECP384R1)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "vendor.example" in san.get_values_for_type(x509.DNSName)
    assert (pki.ca_key.stat().st_mode & 0o777) == 0o600
    with pytest.raises(DeploymentError, match="already holds a CA"):
        init_pki(tmp_path / "pki")
    command = superlink_command(pki, tmp_path / "state.db", port=9999)
    for flag in (
        "--ssl-ca-certfile",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--database",
        "--enable-supernode-auth",
    ):
        assert flag in command


def test_hospital_keys_are_p384_openssh_pairs(tmp_path: Path) -> None:
    keys = make_node_keys(tmp_path, "site-a")
    private = serialization.load_ssh_private_key(keys.private_key.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(keys.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(
        private.curve, ec.SECP384R1
    )
    assert public.public_numbers() == private.public_key().public_numbers()
    assert (keys.private_key.stat().st_mode & 0o777) == 0o600
    with pytest.raises(DeploymentError):
        make_node_keys(tmp_path, "site-a")
    command = supernode_command(
        superlink="127.0.0.1:9093", ca_cert=tmp_path / "ca.crt", private_key=keys.private_key,
        registry=tmp_path, site_id="site-a", port=9100,
    )  # fmt: skip
    node_config = command[command.index("--node-config") + 1]
    assert 'site-id="site-a"' in node_config and "registry=" in node_config


def test_audit_describes_structure_not_values(task_identity) -> None:
    from federation.audit import describe

    request = Message(
        content=RecordDict({"config": ConfigRecord({"a": 1})}), dst_node_id=3, message_type="train"
    )
    reply = _reply(request, "site-a", {"w": np.ones((2, 2), np.float32)}, 4)
    entry = describe(reply)
    assert entry["arrays"] == {"arrays": {"weights": {"shape": [4], "dtype": "float32"}}}
    assert entry["configs"]["site"]["site-id"] == "site-a"
    assert json.dumps(entry)


def test_a_failing_hospital_sends_the_error_type_only(task_identity, tmp_path: Path) -> None:
    from federation.client import NodeSettings, guarded
    from federation.exceptions import LocalTrainingError, SiteDataError

    request = Message(content=RecordDict(), dst_node_id=3, message_type="train")
    settings = NodeSettings(tmp_path)

    def leaks(msg, context, settings):
        raise ValueError("case-0042: image must be uint8")

    with pytest.raises(LocalTrainingError) as caught:
        guarded(leaks, request, None, settings)
    assert "case-0042" not in str(caught.value) and "ValueError" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__

    def nothing_new(msg, context, settings):
        raise SiteDataError("site-a: no eligible case added since registry version 2")

    with pytest.raises(SiteDataError, match="since registry version 2"):
        guarded(nothing_new, request, None, settings)


def test_each_round_runs_its_share_of_the_cycle_schedule(task_identity) -> None:
    from federation.strategy import schedule_span

    config = FederationConfig(rounds=4, lr_schedule="onecycle")
    assert [schedule_span(config, r) for r in (1, 4)] == [(0.0, 0.25), (0.75, 1.0)]
    weights = {"w": np.ones(2, np.float32)}
    strategy = build_strategy(config, num_sites=2, layout=layout_of(weights), round_offset=2)
    arrays = pack(weights)  # resumed after round 2
    for server_round, expected in ((1, (0.5, 0.75)), (2, (0.75, 1.0))):
        (message, _) = strategy.configure_train(
            server_round, arrays, ConfigRecord({"lr": 0.002}), _NodesOnly([1, 2])
        )
        sent = message.content["config"]
        assert (sent["progress-start"], sent["progress-end"]) == expected
        assert sent["lr-schedule"] == "onecycle" and sent["lr"] == 0.002


def test_rounds_of_a_split_schedule_follow_the_single_schedule() -> None:
    """Four spans of a one-cycle schedule give the rates of one uninterrupted run."""
    from models.train import _LrSchedule

    def rates(span: tuple[float, float], steps: int) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = _LrSchedule(optimizer, "onecycle", 3e-3, steps, 0.15, span=span)
        out = []
        for _ in range(steps):
            out.append(optimizer.param_groups[0]["lr"])
            schedule.step()
        return out

    whole = rates((0.0, 1.0), 40)
    split = [r for k in range(4) for r in rates((k / 4, (k + 1) / 4), 10)]
    assert split == pytest.approx(whole, rel=1e-9)
    assert max(whole) == pytest.approx(3e-3, rel=0.02) and whole[0] < whole[6] > whole[-1]


def test_running_statistics_count_for_finiteness_but_not_for_the_norm() -> None:
    reference = {"conv.weight": np.zeros(4, np.float32), "bn.running_var": np.ones(4, np.float32)}
    big_statistics = {
        "conv.weight": np.full(4, 0.1, np.float32),
        "bn.running_var": np.full(4, 900.0, np.float32),
    }
    small = {"conv.weight": np.full(4, 0.1, np.float32), "bn.running_var": np.ones(4, np.float32)}
    nan_statistics = {
        "conv.weight": np.zeros(4, np.float32),
        "bn.running_var": np.full(4, np.nan, np.float32),
    }
    updates = [
        Update(i, f"s{i}", a, 1.0)
        for i, a in enumerate([big_statistics, small, small, nan_statistics])
    ]
    report = screen_updates(reference, updates, norm_factor=5.0)
    assert report.kept == [0, 1, 2]
    assert [(d.site_id, d.reason) for d in report.dropped] == [("s3", "non-finite")]


# -- federated calibration: what a hospital replies and what the vendor accepts --------------


class _HospitalsInProcess(_NodesOnly):
    """A Grid whose nodes are hospitals answering calibration requests in this process with
    the real ClientApp code (``settings`` per node id)."""

    def __init__(self, settings: dict) -> None:
        super().__init__(sorted(settings))
        self.settings = settings
        self.received: list[Message] = []

    def send_and_receive(self, messages, *, timeout=None):
        from federation.calibrate import calibrate_reply

        replies = []
        for m in messages:
            reply = calibrate_reply(m, None, self.settings[m.metadata.dst_node_id])
            assert reply.metadata.src_node_id == m.metadata.dst_node_id
            replies.append(reply)
        self.received.extend(replies)
        return replies


def _calibration_world(tiny_world):
    from federation.task import exchanged_state
    from models.packaging import load_weights

    model, recipe = load_weights(tiny_world.bundle)
    return exchanged_state(model), recipe


def test_calibration_replies_hold_only_allow_listed_aggregates(tiny_world, task_identity) -> None:
    from federation.calibrate import (
        bins_of,
        calibrate_reply,
        calibration_request,
        decode_statistics,
        malformed_calibration,
    )
    from federation.client import NodeSettings

    arrays, recipe = _calibration_world(tiny_world)
    config = FederationConfig(val_fraction=0.3)
    bins = bins_of(config)
    request = Message(
        content=RecordDict(
            {
                protocol.ARRAYS: pack(arrays),
                protocol.CONFIG: calibration_request(config, recipe),
            }
        ),
        dst_node_id=3,
        message_type=protocol.CALIBRATE,
    )
    registry = tiny_world.registries[0]
    honest = calibrate_reply(request, None, NodeSettings(registry)).content
    assert malformed_calibration(honest, bins) is None
    shapes = {k: tuple(v.shape) for k, v in honest[protocol.CALIBRATION].items()}
    assert shapes == protocol.calibration_array_shapes(bins)  # fixed: no per-case dimension
    site = load_site(registry, since=None, rehearsal_size=0, val_fraction=0.3, seed=0, cycle=0)
    stats = decode_statistics(honest, bins, 0.0)
    assert stats.cases == len(site.val) == sum(stats.benign) + sum(stats.malignant)
    assert set(honest[protocol.METRICS].keys()) == protocol.CALIBRATE_METRIC_KEYS

    leaky = calibrate_reply(request, None, NodeSettings(registry, fault=parse_fault("leak-scores")))
    assert "per-case-logits" in malformed_calibration(leaky.content, bins)
    # the audit's allow-list flags the same reply, and passes the honest one
    from federation.audit import audit_violations, describe

    allowed = {k: list(v) for k, v in protocol.calibration_array_shapes(bins).items()}
    weights = packed_shapes(layout_of(arrays))
    honest_reply = calibrate_reply(request, None, NodeSettings(registry))
    check = [describe(honest_reply), describe(leaky)]
    problems = audit_violations(check, weight_shapes=weights, calibration_shapes=allowed)
    assert len(problems) == 1 and "entry 1" in problems[0] and "per-case-logits" in problems[0]

    request.content[protocol.CONFIG]["dp-epsilon"] = 1.0
    noisy = calibrate_reply(request, None, NodeSettings(registry)).content
    assert malformed_calibration(noisy, bins) is None
    histogram = noisy[protocol.CALIBRATION]["hist-benign"].numpy()
    assert not np.allclose(histogram, np.rint(histogram))  # Laplace noise on every bin


def test_the_vendor_fits_from_summed_statistics_and_drops_oversending_hospitals(
    tiny_world, task_identity, tmp_path: Path
) -> None:
    from federation.calibrate import read_calibration, run_calibration
    from federation.client import NodeSettings
    from models.calibration import LogitBins
    from models.train import predict
    from models.validation_stats import fit_calibration, validation_statistics

    arrays, recipe = _calibration_world(tiny_world)
    config = FederationConfig(val_fraction=0.3, calibration_logit_limit=1.0)
    a, b, c = tiny_world.registries
    grid = _HospitalsInProcess(
        {
            11: NodeSettings(a),
            12: NodeSettings(b),
            13: NodeSettings(c, site_id="site-leaks", fault=parse_fault("leak-scores")),
        }
    )
    result = run_calibration(
        grid, arrays, config=config, recipe=recipe, final_round=4, run_dir=tmp_path
    )
    assert sorted(result.sites) == ["site-a", "site-b"]
    assert [(d["site"], d["reason"]) for d in result.dropped] == [("site-leaks", "structure")]
    assert read_calibration(tmp_path) == result
    # the same fit as on the two hospitals' pooled validation cases (computed here, by the test)
    from models.packaging import load_weights

    model, _ = load_weights(tiny_world.bundle)
    bins = LogitBins(low=-1.0, high=1.0, count=config.calibration_bins)
    pooled = None
    for registry in (a, b):
        val = load_site(registry, since=None, rehearsal_size=0, val_fraction=0.3, seed=0,
                        cycle=0).val  # fmt: skip
        stats = validation_statistics(val, predict(model, val), bins)
        pooled = stats if pooled is None else pooled.merge(stats)
    expected = fit_calibration(pooled, confidence=recipe.operating_confidence)
    assert result.fitted == expected


def test_flwr_run_reads_params_yaml_and_settings_json(tmp_path: Path) -> None:
    from federation.server_app import plan_from_run_config

    params = tmp_path / "params.yaml"
    params.write_text("federate:\n  rounds: 7\n  val_fraction: 0.2\n  strategy: krum\n")
    run_config = {
        "params": str(params), "settings": "rounds=2", "sites": "a,b,c", "num-sites": 0,
        "testset": str(tmp_path / "locked"), "run-dir": str(tmp_path / "run"),
    }  # fmt: skip
    plan = plan_from_run_config(run_config)
    assert (plan.config.rounds, plan.config.val_fraction, plan.config.strategy) == (2, 0.2, "krum")
    assert plan.num_sites == 3 and plan.require_all_sites
    with pytest.raises(FederationConfigError, match="params"):
        plan_from_run_config({**run_config, "params": str(tmp_path / "absent.yaml")})
    with pytest.raises(FederationConfigError, match="settings"):
        plan_from_run_config({**run_config, "settings": "{rounds"})
    with pytest.raises(FederationConfigError, match="key=value"):
        plan_from_run_config({**run_config, "settings": "rounds"})
    assert plan_from_run_config({**run_config, "settings": '{"rounds": 3}'}).config.rounds == 3
    # what `vendor federate --superlink` sends survives Flower's --run-config parser and
    # gives back every setting
    from flwr.common.config import parse_config_args

    from federation.config import format_settings

    sent = FederationConfig(rounds=4, strategy="krum", keep_optimizer=False, proximal_mu=1e-05)
    parsed = parse_config_args([f'settings="{format_settings(sent)}" params="{params}"'])
    assert plan_from_run_config({**run_config, **parsed}).config == sent
    # the repository's pyproject states no setting the params file holds
    import tomllib

    root = Path(__file__).resolve().parents[1]
    app = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    settings = {f.replace("_", "-") for f in FederationConfig.__dataclass_fields__}
    assert not settings & set(app)
    assert app["params"] == "params.yaml"
