import re

from tests.training.conftest import corpus, data_cache, make_config, tokenizers  # noqa: F401 - shared fixtures

_STAMP = r"^[IWE]\d{4} (\d\d):(\d\d):(\d\d(?:\.\d+)?) \d+ \S+\] "


def sigterm_to_sigkill_s(out: str) -> float:
    """Seconds torchrun waited between SIGTERM to a worker left after a failure and SIGKILL, read
    off its own time-stamped log lines: the grace a job gives, whatever else made the job slow (a
    busy machine stretches everything around it, not this wait)."""
    sent = re.search(_STAMP + r"Sending process (\d+) closing signal SIGTERM", out, re.M)
    assert sent, f"torchrun sent no SIGTERM:\n{out[-3000:]}"
    killed = re.search(_STAMP + rf"Unable to shutdown process {sent[4]} via 15, forcefully exiting via 9", out, re.M)
    assert killed, f"torchrun did not SIGKILL process {sent[4]}:\n{out[-3000:]}"

    def seconds(m):
        return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])

    return (seconds(killed) - seconds(sent)) % 86400
