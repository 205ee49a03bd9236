"""cdc.usecases.status.Report.problems: what makes `cdc status` exit 1, without servers."""

from cdc.usecases.status import Report


def _fields(**extra: object) -> dict[str, object]:
    return {
        "backlog_changes": 10,
        "oldest_change_age_s": 2.5,
        "oldest_change_age_is_lower_bound": False,
        "tables_missing_triggers": [],
        "hierarchy_problems": [],
        **extra,
    }


def test_a_healthy_report_has_no_problem_without_thresholds():
    assert Report(_fields()).problems() == []


def test_thresholds_are_exceeded_only_above_them():
    report = Report(_fields())
    assert report.problems(max_backlog=10, max_lag=2.5) == []
    assert report.problems(max_backlog=9, max_lag=2.4) == ["backlog 10 > 9", "lag 2.5s > 2.4s"]


def test_a_lag_read_from_a_claim_says_at_least():
    report = Report(_fields(oldest_change_age_is_lower_bound=True))
    assert report.problems(max_lag=1) == ["lag at least 2.5s > 1s"]


def test_servers_down_lost_triggers_and_hierarchy_problems_come_first_in_that_order():
    report = Report(
        _fields(tables_missing_triggers=["public.users"], hierarchy_problems=["run cdc install --tables public.m"]),
        down=["cannot connect to MongoDB"],
    )
    assert report.problems() == [
        "cannot connect to MongoDB",
        "captured tables lost their triggers: public.users",
        "run cdc install --tables public.m",
    ]


def test_a_report_without_postgresql_fields_only_lists_the_server_down():
    report = Report({"postgresql": "down", "mongodb": "up"}, down=["cannot connect to PostgreSQL"])
    assert report.problems(max_backlog=0, max_lag=0) == ["cannot connect to PostgreSQL"]
