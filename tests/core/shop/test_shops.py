"""The shops file: what it accepts, and the one line naming the problem for what it refuses."""

import pytest
import yaml

from regularization_pipeline.core.errors import ConfigurationError
from regularization_pipeline.core.shop.shops import load_shops


def write(tmp_path, content) -> str:
    path = tmp_path / "shops.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return str(path)


def test_shops_are_read_in_order_with_their_settings_and_secrets_by_reference(
    tmp_path, monkeypatch
):
    secret = tmp_path / "us-url"
    secret.write_text("sqlite:///us.db\n")
    monkeypatch.setenv("SHOP_EU_URL", "sqlite:///eu.db")
    monkeypatch.setenv("EU_HOOK_SECRET", "s3cret")
    path = write(
        tmp_path,
        {
            "shops": [
                {
                    "name": "eu",
                    "database_url": {"env": "SHOP_EU_URL"},
                    "timezone": "Europe/Paris",
                    "run": {"limit": 200},
                    "publishers": {
                        "kinds": ["webhook"],
                        "webhook_secret": {"env": "EU_HOOK_SECRET"},
                    },
                },
                {"name": "us", "database_url": {"file": str(secret)}, "scheduled": False},
            ]
        },
    )
    shops = load_shops(path)
    assert list(shops) == ["eu", "us"]
    assert shops["eu"].read_database_url() == "sqlite:///eu.db"
    assert shops["us"].read_database_url() == "sqlite:///us.db"  # the newline stripped
    assert shops["eu"].timezone == "Europe/Paris" and shops["eu"].run == {"limit": 200}
    assert shops["eu"].publisher_overrides() == {"kinds": ["webhook"], "webhook_secret": "s3cret"}
    assert shops["us"].scheduled is False


REFUSED = [
    (
        {"shops": [{"name": "eu", "database_url": "postgresql://u:hunter2@db/eu"}]},
        "shop 'eu': database_url: must be {env: VARIABLE} or {file: PATH}, never the value itself",
    ),
    (
        {
            "shops": [
                {
                    "name": "eu",
                    "database_url": {"env": "X"},
                    "publishers": {"webhook_secret": "hunter2"},
                }
            ]
        },
        "webhook_secret must be {env: VARIABLE} or {file: PATH}",
    ),
    (
        {"shops": [{"name": "eu", "database_url": {"env": "X"}, "provider": {"url": "https://p"}}]},
        "provider.url: must be {env: VARIABLE} or {file: PATH}",
    ),
    (
        {"shops": [{"name": "eu", "database_url": {"env": "X", "file": "/f"}}]},
        "exactly one of env or file",
    ),
    ({"shops": [{"name": "EU shop", "database_url": {"env": "X"}}]}, "shop 'EU shop': name"),
    ({"shops": [{"database_url": {"env": "X"}}]}, "shop '#1': name: Field required"),
    ({"shops": [{"name": "eu", "database_url": {"env": "X"}, "colour": "red"}]}, "colour"),
    ({"shops": []}, "shops: List should have at least 1 item"),
    ({"shop": []}, "shops: Field required"),
    (
        {"shops": [{"name": "eu", "database_url": {"env": "X"}}] * 2},
        "shop 'eu' is listed twice",
    ),
    ("shops: [\n", "is not valid YAML"),
]


@pytest.mark.parametrize(("content", "reason"), REFUSED)
def test_a_bad_shops_file_is_one_error_naming_the_shop_and_field_never_a_secret(
    tmp_path, content, reason
):
    with pytest.raises(ConfigurationError) as caught:
        load_shops(write(tmp_path, content))
    message = str(caught.value)
    assert reason in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_a_secret_that_cannot_be_read_names_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.delenv("SHOP_EU_URL", raising=False)
    path = write(
        tmp_path,
        {
            "shops": [
                {"name": "eu", "database_url": {"env": "SHOP_EU_URL"}},
                {"name": "us", "database_url": {"file": str(tmp_path / "missing")}},
            ]
        },
    )
    shops = load_shops(path)
    with pytest.raises(
        ConfigurationError, match=r"shop 'eu': database_url: \$SHOP_EU_URL is not set"
    ):
        shops["eu"].read_database_url()
    with pytest.raises(ConfigurationError, match="shop 'us': database_url: cannot read file"):
        shops["us"].read_database_url()
