"""Federation commands: ``sonofed vendor federate|pki|superlink|register-hospital|app-hash`` and
``sonofed hospital keys|approve-app|join``. Heavy imports (torch, Flower) happen inside the
handlers."""

from __future__ import annotations

import argparse
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
        client_cert=_vendor_client(args)[0] if args.superlink and args.ca else None,
        client_key=_vendor_client(args)[1] if args.superlink and args.ca else None,
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

    from data_registry.testset import verify_pinned
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

    verify_pinned(args.testset, args.testset_seal)  # a rewrite of labels + SEAL is refused
    outcome = run_cycle(request, on_round=None if args.json else on_round, on_status=_progress)
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


def _progress(line: str) -> None:
    """Status lines of the deployment commands (stderr: stdout may carry JSON)."""
    print(line, file=sys.stderr, flush=True)


def _vendor_client(args: argparse.Namespace) -> tuple[Path, Path]:
    """The vendor's client certificate: --client-cert/--client-key, else operator.pem/.key
    beside --ca (the ``pki init`` folder)."""
    from federation.deployment import Pki

    folder = Path(args.ca).parent
    cert = args.client_cert or Pki.at(folder).client_cert
    key = args.client_key or Pki.at(folder).client_key
    for label, path in (("--client-cert", cert), ("--client-key", key)):
        if not Path(path).is_file():
            raise UserError(
                f"{label} {path}: no such file (the vendor's client certificate from "
                "`sonofed vendor pki init`; the proxy requires it for the Control API)"
            )
    return Path(cert), Path(key)


@handler
def _pki_init(args: argparse.Namespace) -> int:
    _errors()
    from federation.deployment import LOOPBACK, certificate_names, init_pki

    pki = init_pki(args.out, hosts=args.host or [], days=args.days, overwrite=args.overwrite)
    paths = {k: str(v) for k, v in vars(pki).items()}
    names = certificate_names(pki.server_cert)
    if args.json:
        print_json({**paths, "server_names": names})
    else:
        print(f"server certificate {pki.server_cert} names {', '.join(names)} "
              f"({', '.join(LOOPBACK)} for the SuperLink's own executor)")  # fmt: skip
        print(f"CA {pki.ca_cert}: give it to the hospitals; keep {pki.client_cert.name}, "
              f"{pki.client_key.name} and the *.key files here (they admit to the Control API)")  # fmt: skip
    return 0


@handler
def _superlink(args: argparse.Namespace) -> int:
    _errors()
    from federation.deployment import Pki
    from federation.proxy import run_superlink

    return run_superlink(
        Pki.at(args.pki), args.database, host=args.host, port=args.port,
        superlink_port=args.superlink_port, proxy_dir=args.proxy_dir, log_file=args.log_file,
        say=_progress,
    )  # fmt: skip


@handler
def _register(args: argparse.Namespace) -> int:
    _errors()
    from federation.deployment import register_node

    node_id = register_node(
        args.public_key, superlink=args.superlink, ca_cert=args.ca, client=_vendor_client(args),
        flwr_home=args.flwr_home, name=args.name,
    )  # fmt: skip
    if args.json:
        print_json({"node_id": node_id, "public_key": str(args.public_key)})
    else:
        print(f"registered {args.public_key} as SuperNode {node_id}")
    return 0


@handler
def _app_hash(args: argparse.Namespace) -> int:
    _errors()
    from federation.deployment import fab_hash, project_root

    source = args.source or project_root()
    digest = fab_hash(source)
    if args.json:
        print_json({"fab_sha256": digest, "source": str(source)})
    else:
        print(digest)
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
def _approve_app(args: argparse.Namespace) -> int:
    _errors()
    from federation.approval import approve
    from federation.deployment import fab_hash

    if (args.fab_sha256 is None) == (args.source is None):
        raise UserError("give either --fab-sha256 HASH or --source CHECKOUT")
    digest = args.fab_sha256 or fab_hash(args.source)
    approved = approve(args.approved_apps, digest, note=args.note or str(args.source or ""))
    if args.json:
        print_json({"approved_apps": str(args.approved_apps), "fab_sha256": digest,
                    "count": len(approved.approved)})  # fmt: skip
    else:
        print(f"approved FAB sha256 {digest} in {args.approved_apps} "
              f"({len(approved.approved)} approved)")  # fmt: skip
    return 0


@handler
def _join(args: argparse.Namespace) -> int:
    _errors()
    from federation.approval import executor_command, load_approved
    from federation.deployment import check_tls, flower_env, supernode_command
    from federation.exceptions import TlsCheckError
    from federation.services import ProcessGroup, RestartPolicy

    if not (args.registry / "HEAD").is_file():
        raise UserError(f"--registry {args.registry}: not a registry")
    for label, path in (("--key", args.key), ("--ca", args.ca)):
        if not path.is_file():
            raise UserError(f"{label} {path}: no such file")
    approved = load_approved(args.approved_apps)
    try:
        check_tls(args.superlink, args.ca)
        _progress(f"SuperLink {args.superlink}: TLS verified with {args.ca}")
    except TlsCheckError:
        raise
    except Exception as e:  # not up yet: the SuperNode keeps retrying
        _progress(f"SuperLink {args.superlink} not reachable yet ({e}); retrying")
    command = supernode_command(
        superlink=args.superlink, ca_cert=args.ca, private_key=args.key, registry=args.registry,
        site_id=args.site_id, port=args.port, max_retries=args.max_retries,
    )  # fmt: skip
    group = ProcessGroup()
    # --max-retries bounds the attempts; without it the hospital stays in the federation
    restart = None if args.max_retries is not None else RestartPolicy()
    group.start("flower-supernode", command, flower_env(), restart=restart)
    group.start("executor", executor_command(f"127.0.0.1:{args.port}", args.approved_apps),
                flower_env())  # fmt: skip
    _progress(f"SuperNode started; runs only the {len(approved.approved)} app(s) approved in "
              f"{args.approved_apps}")  # fmt: skip
    return group.run(_progress)


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
    fed.add_argument(
        "--testset-seal",
        help="manifest hash the locked set must have (default: pinned by dvc.lock)",
    )
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
    _client_flags(fed, "with --superlink")
    fed.add_argument("--flwr-home", type=Path, default=Path("runs/federation/flwr-home"),
                     help="Flower CLI configuration folder (with --superlink)")  # fmt: skip
    fed.add_argument("--verbose", action="store_true", help="Flower's own log lines")
    fed.add_argument("--json", action="store_true", help="print the result and history as JSON")
    fed.set_defaults(handler=_federate)

    pki = commands.add_parser("pki", help="TLS certificates for the SuperLink and the vendor")
    pki_commands = pki.add_subparsers(dest="pki_command", required=True, metavar="COMMAND")
    init = pki_commands.add_parser(
        "init",
        help="create the CAs, the server certificate and the vendor's client certificate",
        description="EC P-384. ca.crt (give it to the hospitals) signs server.pem, which names "
        "every --host plus localhost, 127.0.0.1 and ::1 (the SuperLink's own executor connects "
        "over loopback). operator-ca.crt, which never leaves the vendor, signs operator.pem: "
        "the client certificate the proxy requires for the Control API.",
    )
    init.add_argument("--out", type=Path, default=Path("runs/federation/pki"), help="folder")
    init.add_argument("--host", action="append", metavar="NAME_OR_IP",
                      help="a name or address hospitals use to reach the SuperLink "
                      "(repeatable; every one goes into the certificate)")  # fmt: skip
    init.add_argument("--days", type=int, default=365, help="validity in days")
    init.add_argument("--overwrite", action="store_true", help="replace an existing CA")
    init.add_argument("--json", action="store_true", help="print the paths as JSON")
    init.set_defaults(handler=_pki_init)

    link = commands.add_parser(
        "superlink",
        help="run the SuperLink behind its proxy (TLS, database, node authentication)",
        description="Run flower-superlink on 127.0.0.1 only (TLS from --pki, state in --database "
        "so runs survive a restart, only registered SuperNodes admitted) and nginx in front of "
        "it on --host:--port: the Fleet API for hospitals, the Control API (register nodes, "
        "run/stop/list runs, pull results) only with the vendor's client certificate. Runs "
        "until stopped (Ctrl-C / SIGTERM). Needs nginx (Debian: apt-get install nginx).",
    )
    link.add_argument("--pki", type=Path, default=Path("runs/federation/pki"), help="pki folder")
    link.add_argument("--database", type=Path, default=Path("runs/federation/superlink.db"))
    link.add_argument("--host", default="127.0.0.1",
                      help="address the proxy listens on for hospitals and the vendor "
                      "(default 127.0.0.1: this machine only; 0.0.0.0: every interface)")  # fmt: skip
    link.add_argument("--port", type=int, default=9093,
                      help="the proxy's port on --host, the one hospitals and the vendor "
                      "connect to (default 9093)")  # fmt: skip
    link.add_argument("--superlink-port", type=int, default=0,
                      help="the SuperLink's own port on 127.0.0.1 (default: a free one)")  # fmt: skip
    link.add_argument("--proxy-dir", type=Path,
                      help="nginx configuration and logs (default: DATABASE-proxy/)")  # fmt: skip
    link.add_argument("--log-file", type=Path, help="also write the SuperLink's log here")
    link.set_defaults(handler=_superlink)

    reg = commands.add_parser(
        "register-hospital",
        help="admit a hospital's public key to the SuperLink",
        description="Register the hospital's EC P-384 public key (flwr supernode register), "
        "through the proxy with the vendor's client certificate.",
    )
    reg.add_argument("--public-key", type=Path, required=True, help="the hospital's .pub file")
    reg.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the proxy")
    reg.add_argument("--ca", type=Path, default=Path("runs/federation/pki/ca.crt"))
    _client_flags(reg, "")
    reg.add_argument("--name", help="a name for the node")
    reg.add_argument("--flwr-home", type=Path, default=Path("runs/federation/flwr-home"))
    reg.add_argument("--json", action="store_true", help="print the node id as JSON")
    reg.set_defaults(handler=_register)

    app_hash = commands.add_parser(
        "app-hash",
        help="the sha256 of the Flower app bundle `federate --superlink` sends",
        description="Hospitals approve this hash (`sonofed hospital approve-app`) before "
        "their SuperNodes run the app.",
    )
    app_hash.add_argument("--source", type=Path, help="app checkout (default: this one)")
    app_hash.add_argument("--json", action="store_true")
    app_hash.set_defaults(handler=_app_hash)


def _client_flags(parser: argparse.ArgumentParser, when: str) -> None:
    suffix = f" ({when})" if when else ""
    parser.add_argument("--client-cert", type=Path,
                        help=f"the vendor's client certificate (default: operator.pem beside "
                        f"--ca){suffix}")  # fmt: skip
    parser.add_argument("--client-key", type=Path,
                        help=f"its key (default: operator.key beside --ca){suffix}")  # fmt: skip


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

    approve_app = commands.add_parser(
        "approve-app",
        help="approve a Flower app bundle (by sha256) that this hospital's SuperNode may run",
        description="Adds the FAB's sha256 to --approved-apps. Take the hash from the vendor "
        "(`sonofed vendor app-hash`) or build it from the source you reviewed (--source).",
    )
    approve_app.add_argument("--fab-sha256", help="the app bundle's sha256")
    approve_app.add_argument("--source", type=Path, help="or: the reviewed app checkout")
    approve_app.add_argument("--approved-apps", type=Path, default=Path("approved-apps.json"))
    approve_app.add_argument("--note", help="why / which release")
    approve_app.add_argument("--json", action="store_true")
    approve_app.set_defaults(handler=_approve_app)

    join = commands.add_parser(
        "join",
        help="join the federation (run a SuperNode over the registry)",
        description="Run flower-supernode (TLS to the vendor's SuperLink, authenticated with "
        "the hospital's key, training on --registry) with --isolation process, and the "
        "hospital's executor, which runs only the app bundles listed in --approved-apps "
        "(their sha256 is checked before any of their code is unpacked). Runs until stopped: "
        "when the SuperNode exits with an error (the SuperLink refused it, e.g. a key the vendor "
        "has not registered yet, or lost it), it is started again after 5 s, doubling up to "
        "60 s; with --max-retries it is not.",
    )
    join.add_argument("--superlink", required=True, metavar="HOST:PORT")
    join.add_argument("--registry", type=Path, required=True, help="the hospital's registry")
    join.add_argument("--key", type=Path, default=Path("keys/supernode.key"), help="private key")
    join.add_argument("--ca", type=Path, default=Path("ca.crt"), help="the vendor's CA certificate")
    join.add_argument("--site-id", help="name reported to the vendor (default: registry's)")
    join.add_argument("--port", type=int, default=9094,
                      help="this SuperNode's local port on 127.0.0.1, where the hospital's "
                      "executor connects (default 9094; one per SuperNode on a host)")  # fmt: skip
    join.add_argument("--max-retries", type=int,
                      help="give up after this many connection attempts (default: keep trying, "
                      "and start the SuperNode again when it exits with an error)")  # fmt: skip
    join.add_argument("--approved-apps", type=Path, default=Path("approved-apps.json"),
                      help="the app bundles this SuperNode may run (`approve-app`)")  # fmt: skip
    join.set_defaults(handler=_join)
