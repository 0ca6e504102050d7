"""Tests for forkd.usage: the seed's Options, Twisted's additions, getopt's rules and messages."""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forkd.usage import Options, UsageError, error, portCoerce


class SeedOptions(Options):
    """Written as the seed says: optStrings, optFlags and opt_* methods recording calls."""

    optStrings = [["port", "p", "8080"], ["path", None, "/var/www"]]
    optFlags = [["verbose", "v"], ["debug", "d"]]

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Any]] = []

    def opt_louder(self) -> None:
        self.calls.append(("louder", None))

    def opt_name(self, value: str) -> None:
        self.calls.append(("name", value))

    def opt_q(self) -> None:
        self.calls.append(("q", None))


class ModernOptions(Options):
    """Twisted's later style: optParameters with doc and coerce, flags with doc, aliases."""

    usage_message = """
        Serve files over HTTP.
          Second line, indented.
    """
    optParameters = [
        ["port", "p", 8080, "Port to listen on.", portCoerce],
        ["workers", "w", 2, "Worker processes.", int],
        ["log_file", None, None, "Where to log."],
        ["torture-device", "t", "comfy-chair", "Preferred torture device."],
    ]
    optFlags = [["quiet", "q", "Say\n        less."], ["dry-run", None, "Do nothing."]]

    def opt_extra(self, value: str) -> None:
        """Add an extra directory
        to serve (repeatable)."""
        self.setdefault("extras", []).append(value)

    opt_x = opt_extra

    def opt_under_score(self) -> None:
        """Count underscores."""
        self["underscores"] = self.get("underscores", 0) + 1


def parsed(cls: type[Options], argv: list[str]) -> Any:
    config = cls()
    config.parseOptions(argv)
    return config


def usage_error(cls: type[Options], argv: list[str]) -> str:
    with pytest.raises(UsageError) as caught:
        cls().parseOptions(argv)
    return str(caught.value)


def run_help(config: Options, argv: list[str]) -> tuple[int | str | None, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        config.parseOptions(argv)
    return exited.value.code, out.getvalue()


# -- the seed's declarations ---------------------------------------------------------------


def test_seed_defaults_are_items_and_attributes() -> None:
    config = parsed(SeedOptions, [])
    assert config["port"] == "8080" and config.port == "8080"
    assert config.path == "/var/www"
    assert config["verbose"] == 0 and config.debug == 0
    assert type(config.verbose) is int


def test_seed_values_given() -> None:
    config = parsed(SeedOptions, ["--port", "80", "-v", "--path=/srv"])
    assert config.port == "80" == config["port"]
    assert config.path == "/srv"
    assert config.verbose == 1 and type(config.verbose) is int
    assert config.debug == 0


def test_opt_methods_called_in_command_line_order_each_time() -> None:
    config = parsed(SeedOptions, ["--louder", "--name", "a", "-q", "--louder", "--name=b", "-qq"])
    assert config.calls == [
        ("louder", None),
        ("name", "a"),
        ("q", None),
        ("louder", None),
        ("name", "b"),
        ("q", None),
        ("q", None),
    ]


def test_one_letter_method_is_short_only() -> None:
    assert usage_error(SeedOptions, ["--q"]) == "option --q not recognized"


def test_flag_given_twice_stays_one() -> None:
    assert parsed(SeedOptions, ["-v", "--verbose", "-vv"]).verbose == 1


# -- modern declarations ---------------------------------------------------------------------


def test_parameters_coerced_and_defaults_untouched() -> None:
    config = parsed(ModernOptions, [])
    assert config.port == 8080 and config.workers == 2 and config.log_file is None
    config = parsed(ModernOptions, ["-p", "443", "--workers", "7", "--log_file", "x.log"])
    assert config.port == 443 and config.workers == 7 and config["log_file"] == "x.log"


def test_dash_and_underscore_are_the_same_in_long_names() -> None:
    config = parsed(ModernOptions, ["--log-file", "a", "--under-score", "--under_score"])
    assert config.log_file == "a" and config["underscores"] == 2
    config = parsed(ModernOptions, ["--torture_device", "rack"])
    assert config["torture-device"] == "rack" and config.torture_device == "rack"


def test_method_alias_is_a_synonym() -> None:
    config = parsed(ModernOptions, ["-x", "a", "--extra", "b", "-xc"])
    assert config["extras"] == ["a", "b", "c"]


def test_coerce_failure_message() -> None:
    assert usage_error(ModernOptions, ["--workers", "many"]) == (
        "Parameter type enforcement failed: invalid literal for int() with base 10: 'many'"
    )
    assert usage_error(ModernOptions, ["-p", "70000"]) == (
        "Parameter type enforcement failed: Port number not in range: 70000"
    )


def test_port_coerce() -> None:
    assert [portCoerce("0"), portCoerce("3210"), portCoerce("65535")] == [0, 3210, 65535]
    for bad in ("", "-21", "65536", "foo"):
        with pytest.raises(ValueError):
            portCoerce(bad)
    assert portCoerce.coerceDoc == "Must be an int between 0 and 65535."  # type: ignore[attr-defined]


def test_coerce_errors_other_than_value_error_are_bugs_not_usage_errors() -> None:
    def broken(value: str) -> str:
        raise RuntimeError("bug")

    class Broken(Options):
        optParameters = [["x", None, None, "", broken]]

    Broken().parseOptions([])  # not called for the default
    with pytest.raises(RuntimeError):
        Broken().parseOptions(["--x", "1"])


def test_declarations_accumulate_over_subclasses() -> None:
    class More(ModernOptions):
        optFlags = [["more", "m"]]
        optParameters = [["workers", "W", 9, "Overridden.", int]]

    config = parsed(More, ["-m", "-q", "-W", "3"])
    assert config.more == 1 and config.quiet == 1 and config.workers == 3
    assert config.port == 8080
    assert usage_error(More, ["-w", "3"]) == "option -w not recognized"


def test_opt_method_overrides_declared_option_keeping_default() -> None:
    class Handled(Options):
        optParameters = [["port", "p", "80", "The port."]]

        def opt_port(self, value: str) -> None:
            self["port"] = "handled " + value

    assert parsed(Handled, []).port == "80"
    assert parsed(Handled, ["-p", "1"]).port == "handled 1"
    assert "The port. [default: 80]" in str(Handled())


def test_attribute_assignment_writes_through_to_items() -> None:
    class Setter(Options):
        optStrings = [["port", "p", "80"]]

        def opt_double(self) -> None:
            self.port = self.port * 2

    config = parsed(Setter, ["--double"])
    assert config["port"] == "8080"
    config.other = 5  # not an option: a plain attribute
    assert "other" not in config and config.other == 5
    with pytest.raises(AttributeError):
        _ = config.missing
    assert not hasattr(config, "subOptions")


# -- getopt's command-line forms ---------------------------------------------------------------


def test_getopt_forms() -> None:
    config = parsed(ModernOptions, ["--port=1", "-w3", "-qt", "rack", "--dry-run"])
    assert (config.port, config.workers, config.quiet, config.torture_device) == (1, 3, 1, "rack")
    assert config["dry-run"] == 1


def test_value_may_look_like_an_option() -> None:
    assert parsed(ModernOptions, ["--log-file", "--quiet"]).log_file == "--quiet"
    assert parsed(ModernOptions, ["-t", "-q"]).torture_device == "-q"
    assert parsed(ModernOptions, ["--log-file="]).log_file == ""


def test_unique_prefix_of_long_name() -> None:
    assert parsed(ModernOptions, ["--tort", "x"]).torture_device == "x"
    assert parsed(SeedOptions, ["--pa", "x"]).path == "x"
    assert usage_error(SeedOptions, ["--p", "1"]) == "option --p not a unique prefix"


class Positional(Options):
    optFlags = [["verbose", "v"]]

    def parseArgs(self, source: str, target: str = "out") -> None:
        self["source"], self["target"] = source, target

    def postOptions(self) -> None:
        self["post"] = (self.verbose, self.source)


def test_double_dash_and_first_argument_end_options() -> None:
    config = parsed(Positional, ["--", "-v"])
    assert config.source == "-v" and config.verbose == 0
    config = parsed(Positional, ["-v", "a", "-v"])
    assert (config.source, config.target) == ("a", "-v")
    assert parsed(Positional, ["-"]).source == "-"


def test_post_options_runs_last() -> None:
    assert parsed(Positional, ["src", "-v"]).post == (0, "src")
    assert parsed(Positional, ["-v", "src"]).post == (1, "src")


def test_wrong_number_of_arguments() -> None:
    assert usage_error(Positional, []) == "Wrong number of arguments."
    assert usage_error(Positional, ["a", "b", "c"]) == "Wrong number of arguments."
    assert usage_error(SeedOptions, ["stray"]) == "Wrong number of arguments."


def test_parse_args_own_type_error_is_not_hidden() -> None:
    class Buggy(Options):
        def parseArgs(self, *args: str) -> None:
            raise TypeError("bug in parseArgs")

    with pytest.raises(TypeError, match="bug in parseArgs"):
        Buggy().parseOptions(["a"])


def test_twisted_error_messages() -> None:
    assert usage_error(SeedOptions, ["--x"]) == "option --x not recognized"
    assert usage_error(SeedOptions, ["-x"]) == "option -x not recognized"
    assert usage_error(SeedOptions, ["-vZ"]) == "option -Z not recognized"
    assert usage_error(SeedOptions, ["--port"]) == "option --port requires argument"
    assert usage_error(SeedOptions, ["-vp"]) == "option -p requires argument"
    assert usage_error(SeedOptions, ["--verbose=1"]) == "option --verbose must not have an argument"
    assert usage_error(SeedOptions, ["--louder="]) == "option --louder must not have an argument"
    assert usage_error(SeedOptions, ["--=1"]) == "option -- not recognized"
    assert usage_error(SeedOptions, ["--a\nb"]) == "option --a\\nb not recognized"
    assert usage_error(SeedOptions, ["-\x1b"]) == "option -\\x1b not recognized"
    assert usage_error(Commands, ["\r"]) == "Unknown command: \\r"
    assert error is UsageError


def test_nothing_dispatched_when_the_line_is_wrong() -> None:
    config = SeedOptions()
    with pytest.raises(UsageError):
        config.parseOptions(["--louder", "--help", "--bogus"])
    assert config.calls == []


def test_default_argv_is_sys_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["prog", "-p", "99", "-v"])
    config = SeedOptions()
    config.parseOptions()
    assert (config.port, config.verbose) == ("99", 1)


# -- sub-commands -----------------------------------------------------------------------------


class Inquisition(Options):
    optFlags = [("expect", "e")]
    optParameters = [("torture-device", "t", "comfy-chair", "Preferred torture device.")]


class HolyQuest(Options):
    optFlags = [("horseback", "h", "Use a horse."), ("for-grail", "g")]


class Commands(Options):
    synopsis = "Usage: mktap [options]"
    optFlags = [("european-swallow", None, "Default swallow type.")]
    subCommands = [
        ("inquisition", "inquest", Inquisition, "Perform an inquisition."),
        ("holyquest", "quest", HolyQuest, "Embark upon a holy quest."),
    ]


def test_sub_command_by_name_and_shortcut() -> None:
    config = parsed(Commands, ["--european-swallow", "inquisition", "-e", "--torture-device=x"])
    assert config["european-swallow"] == 1 and config.subCommand == "inquisition"
    assert isinstance(config.subOptions, Inquisition) and config.subOptions.parent is config
    assert config.subOptions.expect == 1 and config.subOptions.torture_device == "x"
    config = parsed(Commands, ["quest", "--for-grail"])
    assert config.subCommand == "holyquest" and config.subOptions["for-grail"] == 1


def test_no_sub_command_and_default_sub_command() -> None:
    config = parsed(Commands, [])
    assert config.subCommand is None and not hasattr(config, "subOptions")
    config = Commands()
    config.defaultSubCommand = "inquest"
    config.parseOptions(["--european-swallow"])
    assert config.subCommand == "inquisition" and config.subOptions.torture_device == "comfy-chair"


def test_sub_command_errors() -> None:
    assert usage_error(Commands, ["crusade"]) == "Unknown command: crusade"
    assert usage_error(Commands, ["quest", "--bogus"]) == "option --bogus not recognized"
    assert usage_error(Commands, ["quest", "extra"]) == "Wrong number of arguments."


# -- help ---------------------------------------------------------------------------------------


def test_help_prints_usage_message_and_every_option_and_exits_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    code, out = run_help(ModernOptions(), ["--help"])
    assert code == 0
    assert "Serve files over HTTP.\n  Second line, indented.\n" in out
    lines = out.splitlines()

    def line_of(text: str) -> str:
        return next(line for line in lines if text in line)

    assert "Port to listen on. [default: 8080]. Must be an int between 0 and 65535." in out
    assert line_of("--port=").startswith("  -p, --port=")
    assert line_of("--workers=").split() == [
        "-w,",
        "--workers=",
        "Worker",
        "processes.",
        "[default:",
        "2]",
    ]
    assert line_of("--log_file=").split() == ["--log_file=", "Where", "to", "log."]
    assert line_of("--quiet").split() == ["-q,", "--quiet", "Say", "less."]
    assert "Do nothing." in line_of("--dry-run")
    assert "Add an extra directory to serve (repeatable)." in line_of("-x, --extra=")
    assert "--x" not in out and "--under-score" in out
    assert line_of("--help").split() == ["-h,", "--help", "Display", "this", "help", "and", "exit."]
    # one column for all the docs
    starts = {
        line.index(doc)
        for line, doc in [(line_of("--help"), "Display"), (line_of("--quiet"), "Say")]
    }
    assert len(starts) == 1


def test_short_h_is_help_unless_taken() -> None:
    code, out = run_help(SeedOptions(), ["-h"])
    assert code == 0 and "--port=" in out and "-v, --verbose" in out
    assert parsed(HolyQuest, ["-h"]).horseback == 1
    assert "-h, --help" not in str(HolyQuest()) and "  -h, --horseback" in str(HolyQuest())


def test_help_runs_before_anything_after_it() -> None:
    code, _ = run_help(Positional(), ["--help", "not", "enough", "args"])
    assert code == 0


def test_version_only_when_defined() -> None:
    assert usage_error(SeedOptions, ["--version"]) == "option --version not recognized"

    class Versioned(Options):
        def opt_version(self) -> None:
            """Display the version and exit."""
            print("forkd 0.1.0")
            sys.exit(0)

    code, out = run_help(Versioned(), ["--version"])
    assert (code, out) == (0, "forkd 0.1.0\n")


def test_synopsis_and_sub_command_help() -> None:
    config = Commands()
    assert config.getSynopsis() == "Usage: mktap [options]"
    assert str(config) == config.getSynopsis() + "\n" + config.getUsage()
    commands = str(config).split("Commands:\n")[1].splitlines()
    assert [line.split(None, 1) for line in commands] == [
        ["inquisition", "Perform an inquisition."],
        ["holyquest", "Embark upon a holy quest."],
    ]
    code, out = run_help(Commands(), ["inquest", "--help"])
    assert code == 0
    assert out.startswith("Usage: mktap [options] inquisition [options]\n")
    assert "--torture-device=" in out and "--european-swallow" not in out


def test_default_synopsis_names_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/usr/bin/mktap"])
    assert str(SeedOptions()).startswith("Usage: mktap [options]\nOptions:\n")


def test_longdesc_and_empty_options() -> None:
    class Bare(Options):
        longdesc = "Nothing to configure."

    text = Bare().getUsage()
    assert "Nothing to configure." in text and "--help" in text


def test_usage_wraps_to_width(monkeypatch: pytest.MonkeyPatch) -> None:
    class Wordy(Options):
        optFlags = [["chatty", "c", "word " * 40]]

    lines = Wordy().getUsage(width=50).splitlines()
    assert all(len(line) <= 50 for line in lines) and len(lines) > 5
    monkeypatch.setenv("COLUMNS", "junk")
    assert "chatty" in Wordy().getUsage()


# -- pickling and identity ------------------------------------------------------------------------


def test_pickle_round_trip() -> None:
    config = parsed(Commands, ["--european-swallow", "inquest", "-t", "rack"])
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(config, protocol))
        assert type(copy) is Commands and copy == config
        assert copy["european-swallow"] == 1 and copy.european_swallow == 1
        assert copy.subCommand == "inquisition" and copy.subOptions.parent is copy
        assert copy.subOptions.torture_device == "rack"
        again = Commands()
        again.parseOptions(["quest", "-g"])
        assert again.subOptions.for_grail == 1
    seed = pickle.loads(pickle.dumps(parsed(SeedOptions, ["-p", "81", "--louder"])))
    assert (seed.port, seed.calls) == ("81", [("louder", None)])
    seed.parseOptions(["--name", "again"])  # the option table was rebuilt
    assert seed.calls[-1] == ("name", "again")


def test_options_are_hashable_by_identity() -> None:
    a, b = SeedOptions(), SeedOptions()
    assert a == b and len({a, b}) == 2


# -- declaration mistakes fail when the class is used, not on some user's command line -----------


@pytest.mark.parametrize(
    ("attrs", "exception"),
    [
        ({"optFlags": [["one", "x"], ["two", "x"]]}, ValueError),
        ({"optFlags": [[None, "x"]]}, ValueError),
        ({"optParameters": [["p", "ab", None]]}, ValueError),
        ({"optParameters": [["p", None, None, "", "not callable"]]}, TypeError),
        ({"optFlags": [["a", "b", "c", "d"]]}, ValueError),
        ({"opt_two": lambda self, a, b: None}, TypeError),
    ],
)
def test_bad_declarations(attrs: dict[str, Any], exception: type[Exception]) -> None:
    cls = type("Bad", (Options,), attrs)
    with pytest.raises(exception):
        cls()


# -- any command line gives a parse or a UsageError, nothing else -------------------------------


SPELLINGS = [
    "--port", "-p", "--port=", "-p1", "--workers", "-w", "--log_file", "--log-file", "-t",
    "--torture", "--quiet", "-q", "-qw", "--quiet=1", "--dry-run", "--d", "--extra", "-x",
    "--under-score", "--under_score", "--", "-", "", "inquest", "quest", "holyquest", "-e",
    "-g", "--for-grail", "--expect", "0", "65536", "-1", "abc", "--help", "-h", "--he",
]  # fmt: skip


class Fuzzed(ModernOptions):
    subCommands = Commands.subCommands

    def parseArgs(self, first: str | None = None) -> None:
        self["first"] = first


@settings(max_examples=300, deadline=None)
@given(
    argv=st.lists(st.one_of(st.sampled_from(SPELLINGS), st.text(max_size=8)), max_size=8),
    cls=st.sampled_from([Fuzzed, ModernOptions, SeedOptions, Positional, Commands, HolyQuest]),
)
def test_any_argv_parses_or_raises_usage_error(argv: list[str], cls: type[Options]) -> None:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            cls().parseOptions(argv)
    except UsageError as e:
        assert str(e) and "\n" not in str(e)
    except SystemExit as e:  # --help
        assert e.code == 0 and "Options:" in out.getvalue()
