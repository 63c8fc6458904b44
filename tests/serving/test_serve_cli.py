"""`keras-cgd serve` flags: kebab-case with TF Serving's snake_case spellings, bounded port."""

import pytest

from keras_cgd.serving import server


def test_kebab_and_snake_case_flags_are_the_same_option():
    parser = server.build_parser()
    a = parser.parse_args(["models", "--poll-interval", "2.5", "--max-instances", "7"])
    b = parser.parse_args(["models", "--poll_interval", "2.5", "--max_instances", "7"])
    assert (a.poll_interval, a.max_instances) == (b.poll_interval, b.max_instances) == (2.5, 7)


@pytest.mark.parametrize("port", ["-1", "0", "99999", "http"])
def test_out_of_range_port_is_a_usage_error(port, capsys):
    with pytest.raises(SystemExit) as e:
        server.main(["models", "--port", port])
    assert e.value.code == 2
    assert f"received {port!r}" in capsys.readouterr().err
