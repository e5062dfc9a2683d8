"""Errors of the federation: one base, grouped by where they arise.

Foreign exceptions (registry, model, subprocess, cryptography) are re-raised ``from`` the
original so the cause stays visible.
"""

from __future__ import annotations


class FederationError(Exception):
    """Base of every error raised by :mod:`federation`."""


class FederationConfigError(FederationError):
    """A federation setting is unknown, out of range or inconsistent."""


class SiteDataError(FederationError):
    """A hospital's registry cannot provide training data for this round or cycle."""


class LocalTrainingError(FederationError):
    """A hospital's round failed; the reply says only the exception type (details stay in the
    hospital's log, since a foreign message could name a case)."""


class InjectedFaultError(FederationError):
    """A fault injected on purpose by a test or benchmark (node config ``fault=crash:R``)."""


class CheckpointError(FederationError):
    """A checkpoint is unreadable, or belongs to a different run than the one requested."""


class FederationRunError(FederationError):
    """The federated run failed (the simulation or the ServerApp raised)."""


class DeploymentError(FederationError):
    """Certificates, keys or the SuperLink/SuperNode processes could not be set up."""


class RegistrationError(DeploymentError):
    """A hospital's public key could not be registered with the SuperLink."""


class TlsCheckError(DeploymentError):
    """A TLS connection failed its check: the certificate does not name the host, is not signed
    by the given CA, or the vendor's client certificate was refused."""


class ProxyError(DeploymentError):
    """The reverse proxy in front of the SuperLink (nginx) could not be configured or started."""


class AppApprovalError(DeploymentError):
    """A hospital's list of approved Flower apps is missing or malformed, or an app it was sent
    is not on it."""
