"""The one error a bad manifest raises: which field is wrong, and why."""

from __future__ import annotations

DOCUMENT = "document"
"""The field named by errors about the file as a whole (size, encoding, YAML syntax)."""


class ManifestError(ValueError):
    """A manifest that cannot be deployed.

    ``field`` is a path into the manifest in the form users write it
    (``spec.template.spec.containers[0].image``,
    ``spec.template.metadata.annotations["autoscaling.knative.dev/min-scale"]``), so the control
    API can return it as the OpenAI error's ``param`` and a person can find the line.
    """

    def __init__(self, field: str, reason: str, *, source: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.source = source
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.field}: {self.reason}"
        return f"{self.source}: {text}" if self.source else text

    def with_source(self, source: str) -> ManifestError:
        return ManifestError(self.field, self.reason, source=source)

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only ``source`` would otherwise be lost when the error is pickled.
        return (_rebuild, (self.field, self.reason, self.source))


def _rebuild(field: str, reason: str, source: str | None) -> ManifestError:
    return ManifestError(field, reason, source=source)
