"""Sign-up and the personal API token."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from rest_framework.authtoken.models import Token

from searches.forms import SignupForm


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("project_list")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.get_username()}. Start by creating a project.")
        return redirect("project_list")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def api_token(request: HttpRequest) -> HttpResponse:
    """Show the user's API token; POST creates it, or replaces it (the old one stops working)."""
    if request.method == "POST":
        replaced, _ = Token.objects.filter(user=request.user).delete()
        Token.objects.create(user=request.user)
        if replaced:
            messages.success(request, "A new API token was created; the previous one no longer works.")
        else:
            messages.success(request, "Your API token was created.")
        return redirect("api_token")
    token = Token.objects.filter(user=request.user).first()
    return render(request, "searches/api_token.html", {"token": token})
