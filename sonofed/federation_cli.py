"""Federation commands: ``sonofed vendor federate|pki|superlink|register-hospital`` and
``sonofed hospital keys|join``. Heavy imports (torch, Flower) happen inside the handlers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sonofed._output import UserError, add_user_errors, handler, print_json


def _errors() -> None:
    from data_registry.exceptions import RegistryError
    from federation.exceptions import FederationError
    from models.exceptions import ModelError

    add_user_errors(FederationError, ModelError, RegistryError)


def _request(args: argparse.Namespace):
    from federation.cycle import CycleRequest, RoundSettings

    settings = RoundSettings(
        rounds=args.rounds, cycle=args.cycle, strategy=args.strategy,
        local_epochs=args.local_epochs, min_clients=args.min_clients,
        rehearsal_size=args.rehearsal_size, proximal_mu=args.proximal_mu, seed=args.seed,
        dp_epsilon=args.dp_epsilon,
    )  # fmt: skip
    return CycleRequest(
        testset=args.testset,
        sites=tuple(Path(p) for p in (args.sites or "").split(",") if p.strip()),
        out=args.out,
        run_dir=args.run_dir,
        history_file=args.history,
        init=args.init,
        params=args.params,
        version=args.version,
        restart=args.restart,
        package=not args.no_package,
        settings=settings,
        superlink=args.superlink,
        ca=args.ca,
        num_sites=args.num_sites,
        flwr_home=args.flwr_home,
        verbose=args.verbose,
        progress=not args.json,
    )


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def _round_line(row) -> str:
    """One line per round: locked-set AUC and which sites replied."""
    ci = row.auc_ci or [None, None]
    interval = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci[0] is not None else ""
    line = (
        f"round {row.round:>3}: locked-test AUC {_fmt(row.auc)}{interval}, Dice {_fmt(row.dice)}; "
        f"sites {','.join(row.sites) or '-'}"
    )
    if row.dropped:
        line += " (dropped " + ", ".join(f"{d['site']}:{d['reason']}" for d in row.dropped) + ")"
    if row.failed:
        line += (
            " (failed " + ", ".join(str(f.get("site", f.get("node_id"))) for f in row.failed) + ")"
        )
    return line


@handler
def _federate(args: argparse.Namespace) -> int:
    _errors()
    from pydantic import ValidationError

    from federation.cycle import run_cycle

    try:
        request = _request(args)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UserError(f"--{field.split('.')[-1].replace('_', '-')}: {first['msg']}") from e
    if args.json:  # keep stdout for the JSON: flwr run's streamed log goes beside the run folder
        request = request.model_copy(
            update={"log_file": request.resolved_run_dir().with_suffix(".log")}
        )

    def on_round(row) -> None:
        print(_round_line(row), flush=True)

    outcome = run_cycle(request, on_round=None if args.json else on_round)
    if args.json:
        print_json(outcome.model_dump(mode="json"))
        return 0
    if outcome.resumed_from is not None:
        print(f"resumed from the checkpoint of round {outcome.resumed_from}")
    if outcome.calibration:
        c = outcome.calibration
        print(
            f"calibrated at the hospitals ({', '.join(c['sites'])}; {c['cases']['benign']} benign, "
            f"{c['cases']['malignant']} malignant): T={c['temperature']:.3f}"
            + (f", histograms with epsilon={c['epsilon']:g}" if c["epsilon"] else "")
        )
    if outcome.bundle is not None:
        print(f"candidate bundle {outcome.bundle} (version {outcome.version}), locked-test AUC "
              f"{_fmt(outcome.locked_test_auc)}, history {outcome.history_file}")  # fmt: skip
    else:
        print(f"run folder {outcome.run_dir} (not packaged: --no-package)")
    return 0


@handler
def _pki_init(args: argparse.Namespace) -> int:
    _errors()
    from federation.deployment import init_pki

    pki = init_pki(args.out, hosts=args.host or ["localhost", "127.0.0.1"], days=args.days,
                   overwrite=args.overwrite)  # fmt: skip
    paths = {k: str(v) for k, v in vars(pki).items()}
    if args.json:
        print_json(paths)
    else:
        print(f"CA {pki.ca_cert} (give it to the hospitals), server certificate {pki.server_cert}")
    return 0


def _exec(command: list[str], env: dict[str, str]) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, env)
    return 1  # not reached


@handler
def _superlink(args: argparse.Namespace) -> int:
    _errors()
    from federation.deployment import Pki, flower_env, superlink_command

    args.database.parent.mkdir(parents=True, exist_ok=True)
    command = superlink_command(
        Pki.at(args.pki), args.database, host=args.host, port=args.port, log_file=args.log_file
    )
    return _exec(command, flower_env())


@handler
def _register(args: argparse.Namespace) -> int:
    _errors()
    from federation.deployment import register_node

    node_id = register_node(
        args.public_key, superlink=args.superlink, ca_cert=args.ca, flwr_home=args.flwr_home,
        name=args.name,
    )  # fmt: skip
    if args.json:
        print_json({"node_id": node_id, "public_key": str(args.public_key)})
    else:
        print(f"registered {args.public_key} as SuperNode {node_id}")
    return 0


@handler
def _keys(args: argparse.Namespace) -> int:
    _errors()
    from federation.deployment import make_node_keys

    keys = make_node_keys(args.out, args.name, overwrite=args.overwrite)
    if args.json:
        print_json({"private_key": str(keys.private_key), "public_key": str(keys.public_key)})
    else:
        print(f"private key {keys.private_key} (stays here), public key {keys.public_key} "
              "(send it to the vendor)")  # fmt: skip
    return 0


@handler
def _join(args: argparse.Namespace) -> int:
    _errors()
    from federation.deployment import flower_env, supernode_command

    if not (args.registry / "HEAD").is_file():
        raise UserError(f"--registry {args.registry}: not a registry")
    for label, path in (("--key", args.key), ("--ca", args.ca)):
        if not path.is_file():
            raise UserError(f"{label} {path}: no such file")
    command = supernode_command(
        superlink=args.superlink, ca_cert=args.ca, private_key=args.key, registry=args.registry,
        site_id=args.site_id, port=args.port, max_retries=args.max_retries,
    )  # fmt: skip
    return _exec(command, flower_env())


def register_vendor(commands: argparse._SubParsersAction) -> None:
    """Add ``federate``, ``pki``, ``superlink`` and ``register-hospital`` to ``sonofed vendor``."""
    fed = commands.add_parser(
        "federate",
        help="run a federated cycle and write a candidate bundle",
        description="Run Flower over the sites' registries (one-machine simulation, or a "
        "deployed SuperLink with --superlink), score every round on the locked test set "
        "(one line per round), checkpoint every round (a rerun resumes), calibrate at the "
        "hospitals from their aggregate validation statistics, and package the candidate.",
    )
    fed.add_argument("--sites", metavar="REG1,REG2,…", help="the hospitals' registries")
    fed.add_argument("--testset", type=Path, required=True, help="the locked test set folder")
    fed.add_argument("--rounds", type=int, help="server rounds (default: params.yaml)")
    fed.add_argument("--cycle", type=int, help="continual-learning cycle (0: from scratch)")
    fed.add_argument("--init", type=Path, help="bundle to continue from (needed for cycle >= 1)")
    fed.add_argument("--out", type=Path, default=Path("runs/federation/candidate"),
                     help="candidate bundle folder")  # fmt: skip
    fed.add_argument("--version", help="bundle version (default: parent's next minor)")
    fed.add_argument("--run-dir", type=Path, help="checkpoints and logs (default: OUT-run)")
    fed.add_argument(
        "--history", type=Path, help="history JSON (default: OUT/../federate-history.json)"
    )
    fed.add_argument("--params", type=Path, default=Path("params.yaml"),
                     help="params file: `federate` block (settings), `train` block (network)")  # fmt: skip
    fed.add_argument("--strategy", choices=("fedprox", "fedavg", "fedtrimmedavg", "krum",
                                            "multikrum", "bulyan"))  # fmt: skip
    fed.add_argument("--local-epochs", type=int)
    fed.add_argument("--min-clients", type=int)
    fed.add_argument("--rehearsal-size", type=int, help="earlier cases per site (0: naive)")
    fed.add_argument("--proximal-mu", type=float)
    fed.add_argument("--seed", type=int)
    fed.add_argument("--dp-epsilon", type=float,
                     help="Laplace noise on the hospitals' calibration histograms (0: none)")  # fmt: skip
    fed.add_argument("--restart", action="store_true", help="discard the run folder's checkpoints")
    fed.add_argument("--no-package", action="store_true", help="train and score only")
    fed.add_argument("--superlink", metavar="HOST:PORT", help="run on this SuperLink instead")
    fed.add_argument("--ca", type=Path, help="CA certificate of the SuperLink (with --superlink)")
    fed.add_argument("--num-sites", type=int, help="hospitals to wait for (with --superlink)")
    fed.add_argument("--flwr-home", type=Path, default=Path("runs/federation/flwr-home"),
                     help="Flower CLI configuration folder (with --superlink)")  # fmt: skip
    fed.add_argument("--verbose", action="store_true", help="Flower's own log lines")
    fed.add_argument("--json", action="store_true", help="print the result and history as JSON")
    fed.set_defaults(handler=_federate)

    pki = commands.add_parser("pki", help="TLS certificates for the SuperLink")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")
    init = pki_commands.add_parser(
        "init",
        help="create a CA and the SuperLink's server certificate",
        description="EC P-384 CA and server certificate (SANs from --host).",
    )
    init.add_argument("--out", type=Path, default=Path("runs/federation/pki"), help="folder")
    init.add_argument("--host", action="append", help="server name/IP (repeatable)")
    init.add_argument("--days", type=int, default=365, help="validity in days")
    init.add_argument("--overwrite", action="store_true", help="replace an existing CA")
    init.add_argument("--json", action="store_true", help="print the paths as JSON")
    init.set_defaults(handler=_pki_init)

    link = commands.add_parser(
        "superlink",
        help="run the SuperLink (TLS, database, node authentication)",
        description="Replace this process with flower-superlink: TLS from --pki, state in "
        "--database (runs survive a restart), only registered SuperNodes admitted.",
    )
    link.add_argument("--pki", type=Path, default=Path("runs/federation/pki"), help="pki folder")
    link.add_argument("--database", type=Path, default=Path("runs/federation/superlink.db"))
    link.add_argument("--host", default="127.0.0.1", help="address to listen on")
    link.add_argument("--port", type=int, default=9093, help="port (Fleet, Control, Runtime)")
    link.add_argument("--log-file", type=Path, help="also write the log here")
    link.set_defaults(handler=_superlink)

    reg = commands.add_parser(
        "register-hospital",
        help="admit a hospital's public key to the SuperLink",
        description="Register the hospital's EC P-384 public key (flwr supernode register).",
    )
    reg.add_argument("--public-key", type=Path, required=True, help="the hospital's .pub file")
    reg.add_argument("--superlink", required=True, metavar="HOST:PORT")
    reg.add_argument("--ca", type=Path, default=Path("runs/federation/pki/ca.crt"))
    reg.add_argument("--name", help="a name for the node")
    reg.add_argument("--flwr-home", type=Path, default=Path("runs/federation/flwr-home"))
    reg.add_argument("--json", action="store_true", help="print the node id as JSON")
    reg.set_defaults(handler=_register)


def register_hospital(commands: argparse._SubParsersAction) -> None:
    """Add ``keys`` and ``join`` to ``sonofed hospital``."""
    keys = commands.add_parser(
        "keys",
        help="make the hospital's node key pair",
        description="EC P-384 key pair in OpenSSH format; send the .pub file to the vendor.",
    )
    keys.add_argument("--out", type=Path, default=Path("keys"), help="folder for the keys")
    keys.add_argument("--name", default="supernode", help="file name stem")
    keys.add_argument("--overwrite", action="store_true", help="replace an existing key")
    keys.add_argument("--json", action="store_true", help="print the paths as JSON")
    keys.set_defaults(handler=_keys)

    join = commands.add_parser(
        "join",
        help="join the federation (run a SuperNode over the registry)",
        description="Replace this process with flower-supernode: TLS to the vendor's "
        "SuperLink, authenticated with the hospital's key, training on --registry.",
    )
    join.add_argument("--superlink", required=True, metavar="HOST:PORT")
    join.add_argument("--registry", type=Path, required=True, help="the hospital's registry")
    join.add_argument("--key", type=Path, default=Path("keys/supernode.key"), help="private key")
    join.add_argument("--ca", type=Path, default=Path("ca.crt"), help="the vendor's CA certificate")
    join.add_argument("--site-id", help="name reported to the vendor (default: registry's)")
    join.add_argument("--port", type=int, default=9094, help="local port of this SuperNode")
    join.add_argument("--max-retries", type=int, help="give up after this many attempts")
    join.set_defaults(handler=_join)
