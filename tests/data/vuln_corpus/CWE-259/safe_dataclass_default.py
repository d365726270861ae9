import os
from dataclasses import dataclass, field


@dataclass
class MailSettings:
    host: str = "smtp.example.com"
    user: str = "noreply"
    passwd: str = field(default_factory=lambda: os.environ.get("SMTP_PASSWD", ""))
