"""The API's errors: a status, a stable code, and a message that says what to do."""

from typing import Any

from django.http import JsonResponse


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def response(self) -> JsonResponse:
        return error_response(self.status, self.code, self.message, **self.headers)


def error_response(status: int, code: str, message: str, **headers: Any) -> JsonResponse:
    response = JsonResponse({"error": {"code": code, "message": message}}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response
