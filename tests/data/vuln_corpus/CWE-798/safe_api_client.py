import os

import requests


class WeatherClient:
    api_key = os.environ["WEATHER_API_KEY"]

    def today(self, city):
        return requests.get("https://api.weather.example/v1", params={"q": city, "key": self.api_key},
                            timeout=5).json()
