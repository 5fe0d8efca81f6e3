"""The table of provider answers (README "Sending limits"): each real answer a provider gives
when an account sends too much, and look-alikes that are not limits."""
import datetime as dt
import smtplib
from zoneinfo import ZoneInfo

import pytest

from bridge.mail.limits import CONNECTIONS, QUOTA, RATE, Window, cooldown, next_day, parse_budget, provider_limit
from bridge.mail.smtp import classify
from bridge.settings import SettingsError, load_settings

LIMITS = [
    # QQ Mail (smtp.qq.com), per account, per domain, per connection, per IP
    (550, "Sender frequency limited", RATE),
    (550, "Domain frequency limited", RATE),
    (550, "Connection frequency limited", RATE),
    (550, "Ip frequency limited", RATE),
    (550, "您的邮件发送频率过快，请稍后再试", RATE),
    # 163 / 126 (NetEase's published SMTP error codes)
    (451, "MI:SFQ 发信人在15分钟内的发信数量超过限制，请控制发信频率", RATE),
    (451, "RP:QRC 发信方短期内累计投递数量已达上限，该发件人被临时禁止发信", RATE),
    (450, "MI:CCL 发送方发信数量超过限制，被临时禁止发信", RATE),
    (421, "HL:IFC 该IP短期内发送了大量信件，超过了网易的限制，被临时禁止连接", RATE),
    (550, "RP:TRC 发件人当天内累计邮件数量超过限制，当天不再接受该发件人的投信", QUOTA),
    (550, "MI:STC 发件人当天内累计邮件数量超过限制，当天不再接受该发件人的投信", QUOTA),
    (421, "HL:ICC 该IP同时并发连接数过大，超过了网易的限制，被临时禁止连接", CONNECTIONS),
    # Gmail
    (421, "4.7.0 Try again later, closing connection.", RATE),
    (550, "5.4.5 Daily user sending quota exceeded.", QUOTA),
    (550, "5.4.5 Daily SMTP relay limit exceeded for user", QUOTA),
    (454, "4.7.0 Too many login attempts, please try again later.", RATE),
    # Outlook / Office 365
    (554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message", QUOTA),
    (451, "4.7.500 Server busy. Please try again later from [203.0.113.7]", RATE),
    (432, "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", CONNECTIONS),
    # generic wording
    (421, "Too many connections from your host", CONNECTIONS),
    (452, "4.3.1 Rate limit exceeded, slow down", RATE),
]

NOT_LIMITS = [
    (550, "5.1.1 User unknown"),
    (552, "5.2.2 Mailbox full, quota exceeded"),            # the recipient's mailbox, not our account
    (552, "5.3.4 Message size exceeds fixed limit"),
    (554, "DT:SPM 发送的邮件内容包含了未被许可的信息"),
    (535, "Login Fail. Please enter your authorization code to login"),
    (451, "4.3.0 Temporary local problem, please try again later"),
    (250, "OK queued"),
]


@pytest.mark.parametrize("code, text, kind", LIMITS)
def test_limit_answers(code, text, kind):
    assert provider_limit(code, text) == kind


@pytest.mark.parametrize("code, text", NOT_LIMITS)
def test_look_alikes_are_not_limits(code, text):
    assert provider_limit(code, text) is None


def test_a_limit_at_any_step_never_dies_and_never_counts():
    for exc in (smtplib.SMTPSenderRefused(550, b"Sender frequency limited", "a@b"),
                smtplib.SMTPDataError(550, b"5.4.5 Daily user sending quota exceeded."),
                smtplib.SMTPRecipientsRefused({"x@y": (451, b"MI:SFQ too frequent")}),
                smtplib.SMTPConnectError(421, b"HL:ICC too many connections")):
        failure = classify(exc)
        assert failure.limit and not failure.permanent and not failure.counts
    assert classify(smtplib.SMTPDataError(550, b"5.1.1 User unknown")).permanent


def test_budget_grammar():
    assert parse_budget("20/min, 500/day") == (Window(20, 60), Window(500, 86400))
    assert parse_budget("40/10s,2/hour") == (Window(40, 10), Window(2, 3600))
    assert [str(w) for w in parse_budget("20/min,40/10s,500/day")] == ["20/min", "40/10s", "500/day"]
    for bad in ("20", "20/week", "0/min", "x/min"):
        with pytest.raises(ValueError):
            parse_budget(bad)


def test_presets_and_settings():
    qq = load_settings({"SMTP_URL": "smtps://me%40qq.com:code@smtp.qq.com:465"}).smtp
    assert qq.budget == parse_budget("20/min,500/day")
    assert load_settings({"SMTP_HOST": "mail.example.com", "SMTP_PORT": "25"}).smtp.budget == ()
    given = load_settings({"SMTP_HOST": "smtp.qq.com", "SMTP_USER": "me@qq.com", "SMTP_PASSWORD": "x",
                           "SMTP_RATE": "5/min"}).smtp
    assert given.budget == (Window(5, 60),)
    with pytest.raises(SettingsError, match="SMTP_RATE"):
        load_settings({"SMTP_HOST": "h", "SMTP_RATE": "fast"})


def test_cool_down_grows_and_a_quota_waits_for_the_providers_midnight():
    ladder = (60, 120, 300)
    assert [cooldown(ladder, n) for n in (1, 2, 3, 9)] == [60, 120, 300, 300]
    shanghai = ZoneInfo("Asia/Shanghai")
    now = dt.datetime(2026, 6, 1, 20, 14, tzinfo=shanghai).timestamp()
    assert dt.datetime.fromtimestamp(next_day(now, shanghai), shanghai) == dt.datetime(2026, 6, 2, tzinfo=shanghai)
    pacific = ZoneInfo("America/Los_Angeles")
    assert next_day(now, pacific) - now == pytest.approx(
        (dt.datetime(2026, 6, 1, tzinfo=pacific) + dt.timedelta(days=1)).timestamp() - now)
