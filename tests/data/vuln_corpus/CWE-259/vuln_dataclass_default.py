from dataclasses import dataclass


@dataclass
class MailSettings:
    host: str = "smtp.example.com"
    user: str = "noreply"
    passwd: str = "letmein42"
