from slack_sdk import WebClient

SLACK_TOKEN = "xoxb-1234567890-abcdefghij"
client = WebClient(token=SLACK_TOKEN)
