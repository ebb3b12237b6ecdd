"""What the bdh.py benchmark scripts share: the official bdh.py loaded from a path, and
the options every one of them takes."""
import importlib.util


def arguments(parser):
    """Adds --bdh-py, --device, --bf16 and --set to `parser`."""
    parser.add_argument("--bdh-py", required=True, help="the official bdh.py")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--bf16", action="store_true", help="torch.autocast to bfloat16, as bdh.py's train.py runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=INT", help="override a BDHConfig field")


def load(args):
    """The bdh module at args.bdh_py and the BDHConfig that args.set asks for."""
    spec = importlib.util.spec_from_file_location("bdh_reference", args.bdh_py)
    bdh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bdh)
    overrides = {k: int(v) for k, v in (s.split("=", 1) for s in args.set)}
    return bdh, bdh.BDHConfig(**overrides)
