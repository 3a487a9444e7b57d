"""The one settings object: environment variables prefixed ``ADAPTER_`` and an
optional ``config/adapter.yaml``. See INTERFACES.md for the names."""

from __future__ import annotations

from datetime import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "config"


# Bounds on numbers an operator sets: a port of 99999 or a batch of 0 is refused at
# start-up, naming the setting, rather than failing later in a socket or a query.
Port = Annotated[int, Field(ge=0, le=65535)]  # 0: any free port
Positive = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ADAPTER_", yaml_file=CONFIG_DIR / "adapter.yaml", extra="ignore"
    )

    environment: str = "local"  # "local", "test" or "production"
    database_url: str = f"sqlite:///{ROOT / 'var' / 'adapter.db'}"
    broker_url: str = ""  # empty: in-process worker; amqp:// or redis://: Celery
    http_host: str = "127.0.0.1"
    http_port: Port = 8080
    mllp_host: str = "127.0.0.1"
    mllp_port: Port = 2575
    mllp_max_message_bytes: Count = 10 * 1024 * 1024
    mllp_idle_timeout_s: Positive = 300.0
    mllp_max_connections: Count = 256  # open at once; more are closed as soon as accepted
    # From one address (one sender's reconnect loop must not lock the other hospitals out);
    # 0: no limit (behind a TCP balancer every connection comes from its address)
    mllp_max_connections_per_address: int = Field(default=64, ge=0)
    mllp_tls_cert: str = ""
    mllp_tls_key: str = ""
    mllp_tls_client_ca: str = ""  # set to require client certificates (mutual TLS)
    max_body_bytes: Count = 5 * 1024 * 1024
    # FHIR writes: "background" answers once stored and publishes the events after
    # (adapter/fhir_intake.py); "inline" publishes them before answering, so the
    # pipeline's refusal is a 422 and nothing is stored.
    fhir_processing: Literal["background", "inline"] = "background"
    # Helper processes that validate the resources of large Bundles beside the
    # serving process (fhir/validation_pool.py): empty for one per core beyond the
    # first (at most 4), 0 to validate in the serving process.
    fhir_validation_processes: Annotated[int, Field(ge=0, le=64)] | None = None

    config_dir: Path = CONFIG_DIR
    var_dir: Path = ROOT / "var"
    timezone: str = "Europe/Rome"
    default_language: str = "it"
    clinic_name: str = "Poliambulatorio San Luca"
    clinic_phone: str = "+39 02 1234 5678"
    public_base_url: str = "http://127.0.0.1:8080"

    channels: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["sandbox"])
    worker_poll_interval_s: Positive = 0.2
    claim_batch_size: Count = 50
    claim_lease_s: Positive = 120.0
    # Non-urgent messages go out only inside this window (clinic time), and not on
    # Italian public holidays when send_on_holidays is false. Equal start and end: any hour.
    sending_window_start: time = time(8, 0)
    sending_window_end: time = time(21, 0)
    send_on_holidays: bool = False
    sms_max_segments: Count = 2  # templates rendering to more parts are reported at start-up
    # Sends per second per channel (provider rate limits), e.g. {"sms": 10}; unset = unlimited.
    channel_rate_limits: dict[str, float] = Field(default_factory=dict)
    # Production mode (ADAPTER_BROKER_URL set): Celery workers, see adapter/celery_app.py.
    celery_queue: str = "adapter"  # one name per deployment (and per test run)
    worker_concurrency: Count = 2  # pool processes per `python -m adapter worker`
    dispatch_queue_high_water: Count = 4  # batches waiting in the queue before claiming pauses
    # Redis: an unacknowledged task is redelivered after this; must exceed claim_lease_s.
    broker_visibility_timeout_s: Positive = 300.0
    # Write-backs and application ACKs to a hospital whose listener is down are retried
    # (at most 10 minutes apart) this long after they were queued, then given up.
    hospital_retry_hours: Positive = 72.0
    log_level: str = "INFO"
    log_json: bool = True  # structured JSON logs on stderr (serve and worker)

    master_key: SecretStr | None = None  # base64 32 bytes; else master_key_file
    master_key_file: Path | None = None
    audit_signing_key_file: Path | None = None

    twilio_api_base: str = "https://api.twilio.com"
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_from: str = ""
    whatsapp_api_base: str = "https://graph.facebook.com/v21.0"
    whatsapp_token: SecretStr = SecretStr("")
    whatsapp_app_secret: SecretStr = SecretStr("")
    whatsapp_phone_number_id: str = ""
    whatsapp_verify_token: SecretStr = SecretStr("")
    telegram_api_base: str = "https://api.telegram.org"
    telegram_bot_token: SecretStr = SecretStr("")
    telegram_secret_token: SecretStr = SecretStr("")
    telegram_bot_name: str = ""
    sandbox_webhook_secret: SecretStr = SecretStr("")
    smtp_host: str = "localhost"
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 587
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = True
    smtp_from: str = "noreply@example.org"

    @field_validator("channels", mode="before")
    @classmethod
    def _split_channels(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.startswith("["):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _a_database_we_can_open(cls, value: str) -> str:
        problem = database_url_problem(value)
        if problem:
            raise PydanticCustomError("database_url", problem)
        return value

    @model_validator(mode="after")
    def _redis_redelivers_only_after_the_lease(self) -> Settings:
        """Redis hands a task not yet acknowledged to another worker after the visibility
        timeout, even while the first still runs it. A dispatch batch redelivered while
        its claims' lease lasts is sent by both: the same message twice to a patient.
        Redelivered after the lease, it sends nothing (adapter/celery_app.py)."""
        redis = self.broker_url.startswith(("redis://", "rediss://"))
        if redis and self.broker_visibility_timeout_s <= self.claim_lease_s:
            raise PydanticCustomError(
                "visibility_within_lease",
                f"ADAPTER_BROKER_VISIBILITY_TIMEOUT_S ({self.broker_visibility_timeout_s:g} s) must be longer than "
                f"ADAPTER_CLAIM_LEASE_S ({self.claim_lease_s:g} s) with a Redis broker: Redis would hand a dispatch "
                "batch still being sent to a second worker, and patients would get the same message twice",
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


DATABASE_URL_FORMS = "sqlite:///relative/path.db, sqlite:////absolute/path.db or postgresql+psycopg://user:password@host:5432/database"


def database_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as ADAPTER_DATABASE_URL, never repeating it (it may hold
    a password); None when SQLAlchemy can open it with a driver we ship.

    >>> database_url_problem("postgres://clinic:secret@db/adapter")
    'postgres:// is not understood: write postgresql+psycopg://user:password@host:5432/database'
    >>> database_url_problem("sqlite:///var/adapter.db") is None
    True
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    except NoSuchModuleError:
        scheme = url.split(":", 1)[0]
        if scheme.split("+", 1)[0] in ("postgres", "postgresql"):
            return f"{scheme[:40]}:// is not understood: write postgresql+psycopg://user:password@host:5432/database"
        return f"not a database this adapter can use ({scheme[:40]}://): use {DATABASE_URL_FORMS}"
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return f"not a database URL: use {DATABASE_URL_FORMS}"
    if (backend, driver) not in (("sqlite", "pysqlite"), ("postgresql", "psycopg")):
        return f"the {backend}+{driver} driver is not one this adapter ships: use {DATABASE_URL_FORMS}"
    if backend == "sqlite" and (parsed.host or parsed.database in (None, "", ":memory:")):
        # In memory, each connection would see a database of its own.
        return f"SQLite needs a file path, with three slashes before a relative one: {DATABASE_URL_FORMS}"
    return None


@lru_cache
def get_settings() -> Settings:
    return Settings()


def describe(error: ValidationError) -> list[str]:
    """A settings validation error as lines an operator can act on: the variable (or
    the key in config/adapter.yaml) and what is wrong, never the value (it may be a
    secret).

    >>> try:
    ...     Settings(mllp_port=99999)
    ... except ValidationError as exc:
    ...     describe(exc)
    ['ADAPTER_MLLP_PORT (mllp_port in config/adapter.yaml): Input should be less than or equal to 65535']
    """
    # A rule between settings has no place of its own: its message names them.
    return [setting_line(str(item["loc"][0]), item["msg"]) if item["loc"] else item["msg"] for item in error.errors()]


def setting_line(name: str, problem: str) -> str:
    """What is wrong with the setting ``name``, naming it as the environment and
    config/adapter.yaml spell it."""
    return f"ADAPTER_{name.upper()} ({name} in config/adapter.yaml): {problem}"
