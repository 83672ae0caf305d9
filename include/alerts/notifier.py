"""The SMTP provider's SmtpNotifier, with its message made from the context when it is sent."""
from __future__ import annotations

from airflow.providers.smtp.notifications.smtp import SmtpNotifier


class PlannerSmtpNotifier(SmtpNotifier):
    """`SmtpNotifier` whose subject and HTML come from `builder(context)` at send time (the failing task, its
    error, its log) or are given whole. The message is plain text to Jinja: it is set after the notifier's
    template rendering, so an error text holding `{{` cannot break or inject into it."""

    def __init__(self, *, builder=None, subject: str | None = None, html_content: str | None = None, **kwargs):
        # "" keeps SmtpNotifier from loading its default templates; the message is set in notify()
        super().__init__(subject="", html_content="", **kwargs)
        self.builder, self.fixed = builder, (subject, html_content)

    def notify(self, context) -> None:
        subject, html = self.builder(context) if self.builder else self.fixed
        self.subject, self.html_content = subject, html
        try:
            super().notify(context)
        finally:
            self.subject, self.html_content = "", ""  # a shared notifier (default_args) keeps no message
