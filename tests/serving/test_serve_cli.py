"""`keras-cgd serve` flags: kebab-case with TF Serving's snake_case spellings, bounded port."""

import pytest

from keras_cgd.serving import server


def test_kebab_and_snake_case_flags_are_the_same_option():
    parser = server.build_parser()
    a = parser.parse_args(["models", "--poll-interval", "2.5", "--max-instances", "7"])
    b = parser.parse_args(["models", "--poll_interval", "2.5", "--max_instances", "7"])
    assert (a.poll_interval, a.max_instances) == (b.poll_interval, b.max_instances) == (2.5, 7)


@pytest.mark.parametrize("port", ["-1", "0", "99999", "65536"])
def test_out_of_range_port_is_a_one_line_error(port, capsys):
    assert server.main(["models", "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[1, 65535]" in err and f"Received: port={port}" in err, err


def test_a_port_that_is_not_a_number_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        server.main(["models", "--port", "http"])
    assert e.value.code == 2
    assert "received 'http'" in capsys.readouterr().err


def test_make_server_takes_port_zero_the_command_line_does_not():
    server.check_port(0, lowest=0)
    with pytest.raises(ValueError, match=r"\[1, 65535\].*Received: port=0"):
        server.check_port(0)
    with pytest.raises(ValueError, match="Received: port=True"):
        server.check_port(True, lowest=0)
