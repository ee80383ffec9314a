"""A lost connection is waited for, then named; anything else passes through at once."""

import psycopg
import pytest

from asl_sweep.runtime import outage
from asl_sweep.runtime.errors import StoreError


def _flaky(failures: int, error: Exception):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return "answered"

    return call, calls


REFUSED = psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", '
                                   'port 1 failed: Connection refused')


def test_a_lost_connection_is_retried_until_it_answers(monkeypatch, caplog):
    monkeypatch.setenv("ASL_SWEEP_STORE_RETRY_S", "30")
    call, calls = _flaky(2, REFUSED)
    assert outage.retrying(call, "the test store")() == "answered" and len(calls) == 3
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith("the test store is not answering")


def test_a_store_away_past_the_budget_is_one_line_and_later_calls_do_not_wait(monkeypatch):
    monkeypatch.setenv("ASL_SWEEP_STORE_RETRY_S", "1")
    call, calls = _flaky(1000, REFUSED)
    with pytest.raises(StoreError, match=r"the test store has not answered for 1 s \(connection"):
        outage.retrying(call, "the test store")()
    before = len(calls)
    with pytest.raises(StoreError):
        outage.retrying(call, "the test store")()
    assert len(calls) == before + 1  # given up: one try, no second wait
    outage.retrying(_flaky(0, REFUSED)[0], "the test store")()  # an answer resets it


def test_another_stores_answer_does_not_end_an_outage(monkeypatch, caplog):
    """A tracking server down beside an Optuna store that answers: the answer is not the
    server's, so the server's outage is said once and, given up, its calls fail at once."""
    monkeypatch.setenv("ASL_SWEEP_STORE_RETRY_S", "1")
    away, calls = _flaky(1000, REFUSED)
    with pytest.raises(StoreError, match="the away store has not answered for 1 s"):
        outage.retrying(away, "the away store")()
    assert outage.retrying(_flaky(0, REFUSED)[0], "the other store")() == "answered"
    before = len(calls)
    with pytest.raises(StoreError):
        outage.retrying(away, "the away store")()
    assert len(calls) == before + 1  # still given up: one try, no second wait
    said = [r.getMessage() for r in caplog.records if "is not answering" in r.getMessage()]
    assert len(said) == 1, said
    outage.retrying(_flaky(0, REFUSED)[0], "the away store")()  # its own answer ends it


def test_other_errors_pass_through_at_once():
    call, calls = _flaky(1, ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        outage.retrying(call, "the test store")()
    assert len(calls) == 1


def test_the_reason_said_is_the_words_that_say_the_connection_was_lost():
    """MLflow's client puts 200 characters of URL and retry count before "Connection
    refused": the line said "... Max retries exceeded with url: /api/2.0/mlflow/experim"."""
    mlflow_said = ("API request to http://127.0.0.1:1/api/2.0/mlflow/experiments/search failed "
                   "with exception HTTPConnectionPool(host='127.0.0.1', port=1): Max retries "
                   "exceeded with url: /api/2.0/mlflow/experiments/search (Caused by "
                   "NewConnectionError(\"HTTPConnection(host='127.0.0.1', port=1): Failed to "
                   "establish a new connection: [Errno 111] Connection refused\"))")
    reason = outage.lost_connection(RuntimeError(mlflow_said))
    assert reason.startswith("...") and reason.endswith(
        "Failed to establish a new connection: [Errno 111] Connection refused"), reason
    assert len(reason) <= 170
    assert outage.lost_connection(REFUSED) == str(REFUSED)  # a short line whole


def test_a_server_error_answer_is_an_outage_whether_or_not_mlflow_retried_it():
    """A tracking server answering 500, 502, 503 or 504 is waited for as one that is away:
    MLflow's client says so as urllib3's "too many 503 error responses" once its retries are
    spent, or, where it returned the answer without retrying, as "failed with error code
    503 != 200", which passed through as MLflow's traceback (a failure of the suite's
    503 and 500 tests that came and went with the order of the tests)."""
    for code in (500, 502, 503, 504):
        plain = (f"API request to endpoint /api/2.0/mlflow/experiments/search failed with "
                 f"error code {code} != 200. Response body: '<html>not mlflow</html>'")
        assert outage.lost_connection(RuntimeError(plain)) == plain  # a short line whole
    for code in (400, 401, 403, 404, 501):  # an answer, not an outage
        plain = (f"API request to endpoint /api/2.0/mlflow/experiments/search failed with "
                 f"error code {code} != 200. Response body: ''")
        assert outage.lost_connection(RuntimeError(plain)) is None
