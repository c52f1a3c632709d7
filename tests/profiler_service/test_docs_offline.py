"""``/docs`` works on a device without internet: it references only this service's own URLs, and they answer."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

URL_ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|\burl\s*:\s*["']([^"']+)["']""")


def test_docs_reference_only_local_urls_that_answer(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    urls = [a or b for a, b in URL_ATTRIBUTE.findall(html)]
    assert len(urls) >= 4, urls  # stylesheet, icon, script, the OpenAPI document
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        response = client.get(url)
        assert response.status_code == 200, url
        assert len(response.content) > 100, url
    assert '"validatorUrl": null' in html  # Swagger UI would otherwise fetch a badge from its online validator
    types = {url.rsplit(".", 1)[-1]: client.get(url).headers["content-type"] for url in urls}
    assert types["js"].startswith(("text/javascript", "application/javascript"))
    assert types["css"].startswith("text/css") and types["json"].startswith("application/json")
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN: not served
