"""`from microblob.flowcept import Flowcept`: Flowcept 1.0.3's object API, unchanged for its callers, on a
microblob store.

What runs as it does with Flowcept: ``with Flowcept(workflow_name=...)``, ``Flowcept.current_workflow_id``,
``Flowcept.insert_or_update_object/_ml_model/_dataset/_torch_model``, and on ``Flowcept.db``:
``get_blob_object``, ``blob_object_query``, ``query(collection="objects"|"object_history"|"workflows")``,
``get_object_history``, ``get_blob_fingerprint``, ``blob_objects_equal``, ``load_torch_model``, the
``ml_model``/``dataset`` helpers, and the older ``save_or_update_*`` spellings. Documents come back in
Flowcept's field names (``object_type``, ``grid_fs_file_id``, ``data_sha256``, ``object_size_bytes``, and
``storage_type`` in histories) beside microblob's own.

Where microblob differs on purpose:

- ``pickle=True`` is refused (`InvalidArgument`): unpickling bytes read back from a store runs whatever
  code they name, so whoever reads the store must trust every writer. Pickle explicitly
  (``pickle.dumps(obj)``) and store the bytes, so the decision to unpickle is visible where it is made.
- A dict or list payload is stored as JSON (``application/json``), a str as UTF-8 text; documents from
  ``query``/``blob_object_query`` give the value back under ``data`` (``BlobObject.data`` stays bytes).
- Flowcept's task/agent/dashboard collections and its message queue are not here: this is the object store.
- ``get_blob_object`` returns None for an unknown id or version, as Flowcept does.

The store is `Flowcept.configure(store_or_uri)`, else `microblob.connect()` (``$MICROBLOB_URI``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Any

from ._exceptions import InvalidArgument, NotFound
from .store.connect import connect
from .store.core import Store
from .store.flowcept_layout import as_flowcept
from .store.objects import BlobObject
from .store.workflows import Workflow

__all__ = ["PICKLE_REFUSED", "Flowcept", "FlowceptDB"]

PICKLE_REFUSED = (
    "pickle=True is refused: unpickling bytes read back from a store runs any code they name, so every "
    "reader would have to trust every writer. Pickle explicitly and store the bytes "
    "(object=pickle.dumps(obj)); unpickle only what you trust."
)
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_OBJECT_COLLECTIONS = ("objects", "object_history")


def _payload(obj: Any, pickle: Any) -> tuple[Any, str | None]:
    """What to store for a Flowcept payload, and its content type (None: the store decides)."""
    if pickle:
        raise InvalidArgument(PICKLE_REFUSED)
    if isinstance(obj, (dict, list)):
        try:
            text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"a {type(obj).__name__} payload is stored as JSON, and this one is not JSON ({exc}); "
                "serialise it yourself and pass bytes") from None
        return text.encode("utf-8"), _JSON
    if isinstance(obj, str):
        return obj.encode("utf-8"), _TEXT
    return obj, None


def _decoded(doc: dict[str, Any]) -> dict[str, Any]:
    """A document in Flowcept's names, with a JSON or text payload given back as the value it was."""
    out = as_flowcept(doc)
    data = out.get("data")
    if isinstance(data, (bytes, bytearray)):
        ctype = str(out.get("content_type") or "")
        if ctype == _JSON:
            out["data"] = json.loads(bytes(data))
        elif ctype == _TEXT:
            out["data"] = bytes(data).decode("utf-8")
    return out


class _FileReader:
    """What Flowcept code reaches through ``Flowcept.db._dao()``: the bytes of a stored file."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def get_file_data(self, file_id: Any) -> bytes:
        with self._store.files.open_download_stream(file_id) as stream:
            return stream.read()


class FlowceptDB:
    """``Flowcept.db``: Flowcept's DBAPI object methods over a microblob `Store`."""

    def __init__(self, store: Store) -> None:
        if not isinstance(store, Store):
            raise InvalidArgument(f"store must be a microblob Store, not {type(store).__name__}")
        self.store = store

    def _dao(self) -> _FileReader:
        return _FileReader(self.store)

    # -- saving ----------------------------------------------------------------------------------------

    def insert_or_update_object(
        self,
        object: Any,
        object_id: str | None = None,
        task_id: str | None = None,
        workflow_id: str | None = None,
        object_type: str | None = None,
        custom_metadata: Mapping[str, Any] | None = None,
        save_data_in_collection: bool = False,
        pickle: bool = False,
        control_version: bool = False,
        tags: list[str] | None = None,
        *,
        type: str | None = None,
    ) -> str:
        """Save `object` (bytes, a path, a Blob, a file, or a dict/list/str: see the module doc)."""
        data, content_type = _payload(object, pickle)
        return self.store.save_or_update_object(
            data, object_id=object_id, workflow_id=workflow_id or Flowcept.current_workflow_id, task_id=task_id,
            type=type, object_type=object_type, custom_metadata=custom_metadata,
            save_data_in_collection=save_data_in_collection, control_version=control_version,
            content_type=content_type, tags=tags,
        )

    save_or_update_object = insert_or_update_object  # Flowcept < 1.0's spelling

    def insert_or_update_ml_model(self, object: Any, object_id: str | None = None, **kwargs: Any) -> str:
        return self.insert_or_update_object(object, object_id, **_kind(kwargs, "ml_model"))

    save_or_update_ml_model = insert_or_update_ml_model

    def insert_or_update_dataset(self, object: Any, object_id: str | None = None, **kwargs: Any) -> str:
        return self.insert_or_update_object(object, object_id, **_kind(kwargs, "dataset"))

    save_or_update_dataset = insert_or_update_dataset

    def insert_or_update_torch_model(
        self,
        model: Any,
        object_id: str | None = None,
        task_id: str | None = None,
        workflow_id: str | None = None,
        custom_metadata: Mapping[str, Any] | None = None,
        control_version: bool = False,
        save_profile: bool = True,
        tags: list[str] | None = None,
    ) -> str:
        """The model's state dict (safetensors), type ``ml_model``, its class name in the metadata.
        `save_profile` is accepted; Flowcept's model profile is Flowcept's own and is not computed."""
        meta = {**(custom_metadata or {}), "class": type(model).__name__}
        return self.store.save_or_update_torch_model(
            model, object_id, workflow_id=workflow_id or Flowcept.current_workflow_id, task_id=task_id,
            custom_metadata=meta, control_version=control_version, tags=tags,
        )

    save_or_update_torch_model = insert_or_update_torch_model

    def update_object_metadata(self, object_id: str, **fields: Any) -> Any:
        return self.store.update_object_metadata(object_id, **fields)

    # -- reading ---------------------------------------------------------------------------------------

    def get_blob_object(self, object_id: str, version: int | None = None) -> BlobObject | None:
        """The latest version, or exactly `version`; None if there is no such object or version."""
        try:
            return self.store.get_blob_object(object_id, version)
        except NotFound:
            return None

    get_ml_model = get_blob_object
    get_dataset = get_blob_object

    def query(
        self,
        filter: Mapping[str, Any] | None = None,
        projection: Any = None,
        limit: int = 0,
        sort: Any = None,
        aggregation: Any = None,
        remove_json_unserializables: bool = True,
        collection: str = "tasks",
    ) -> list[dict[str, Any]]:
        """Documents of `objects`, `object_history` or `workflows`, object documents in Flowcept's names."""
        if aggregation is not None:
            raise InvalidArgument("aggregation is not supported; filter, sort and project instead")
        if collection not in (*_OBJECT_COLLECTIONS, "workflows"):
            raise InvalidArgument(
                f"collection {collection!r}: microblob keeps Flowcept's objects, object_history and workflows, "
                "not its tasks or agents")
        if isinstance(projection, (list, tuple)):
            projection = {field: 1 for field in projection}
        docs = self.store.query(filter, collection=collection, projection=projection, sort=sort, limit=limit)
        if collection in _OBJECT_COLLECTIONS:
            return [_decoded(d) for d in docs]
        return docs

    def blob_object_query(self, filter: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Latest-version documents matching `filter` (``object_type`` or ``type``), in-object bytes included."""
        return self.query(filter, collection="objects")

    # Flowcept 1.0.3's helpers query every object: the caller's filter names the type.
    ml_model_query = blob_object_query
    dataset_query = blob_object_query

    def get_object_history(self, object_id: str) -> list[dict[str, Any]]:
        """Every version's metadata, newest first, with Flowcept's ``storage_type``; no bytes, no file ids."""
        out = []
        for entry in self.store.get_object_history(object_id):
            doc = as_flowcept(entry)
            doc["storage_type"] = "in_object" if entry.get("storage") == "inline" else "gridfs"
            doc.pop("grid_fs_file_id", None)
            out.append(doc)
        return out

    list_object_versions = get_object_history

    def get_blob_fingerprint(self, object_id: str, version: int | None = None) -> dict[str, Any]:
        """Hash and size of a version without reading its bytes (Flowcept's keys and microblob's)."""
        fp = self.store.get_blob_fingerprint(object_id, version)
        return {
            **fp,
            "object_size_bytes": fp["size"],
            "data_sha256": fp["sha256"],
            "data_hash_algo": "sha256",
            "storage_type": "in_object" if fp["storage"] == "inline" else "gridfs",
        }

    def blob_objects_equal(
        self,
        object_id_a: str,
        object_id_b: str,
        version_a: int | None = None,
        version_b: int | None = None,
        fallback_to_payload: bool = False,
    ) -> bool:
        """Same bytes, by sha256 (every microblob version has one; `fallback_to_payload` is never needed)."""
        return self.store.blob_objects_equal(object_id_a, object_id_b, version_a, version_b)

    def load_torch_model(self, model: Any, object_id: str, version: int | None = None) -> dict[str, Any]:
        """Load the weights into `model`; return the record, also kept as ``model._flowcept_model_object``."""
        meta = self.store.load_torch_model(model, object_id, version)
        doc = as_flowcept(meta)
        model._flowcept_model_object = doc
        return doc

    def close(self) -> None:
        self.store.close()


def _kind(kwargs: dict[str, Any], kind: str) -> dict[str, Any]:
    given = kwargs.pop("object_type", None) or kwargs.pop("type", None)
    if given not in (None, kind):
        raise InvalidArgument(f"this helper saves object_type {kind!r}, not {given!r}")
    return {**kwargs, "object_type": kind}


class _FlowceptType(type):
    """``Flowcept.db`` is a property of the class itself, as in Flowcept."""

    @property
    def db(cls) -> FlowceptDB:
        if Flowcept._db is None:
            Flowcept._db = FlowceptDB(connect())
        return Flowcept._db


class Flowcept(metaclass=_FlowceptType):
    """Flowcept's controller for the object API: ``with Flowcept(workflow_name="train"):`` makes a
    workflow current (``Flowcept.current_workflow_id``) for every object saved inside it."""

    current_workflow_id: str | None = None
    campaign_id: str | None = None
    _db: FlowceptDB | None = None

    @classmethod
    def configure(cls, store: Store | str | os.PathLike[str] | None = None) -> FlowceptDB:
        """Use this store (or URI; None: `microblob.connect()`'s default) for ``Flowcept.db`` from now on."""
        if store is None or isinstance(store, (str, os.PathLike)):
            store = connect(store)
        Flowcept._db = FlowceptDB(store)
        return Flowcept._db

    def __init__(
        self,
        interceptors: Any = None,
        bundle_exec_id: str | None = None,
        campaign_id: str | None = None,
        workflow_id: str | None = None,
        workflow_name: str | None = None,
        workflow_description: str | None = None,
        *args: Any,
        save_workflow: bool = True,
        **kwargs: Any,
    ) -> None:
        """Flowcept's arguments; those about interceptors, agents and its message queue are accepted and
        have nothing to do here."""
        self.workflow_id = workflow_id or str(uuid.uuid4())
        self.current_workflow_id = self.workflow_id  # an instance's own; the class's is set while it runs
        self.workflow_name = workflow_name
        self.campaign_id = campaign_id or str(uuid.uuid4())
        self.custom_metadata = {"description": workflow_description} if workflow_description else None
        self.save_workflow = save_workflow
        self._workflow: Workflow | None = None
        self._previous: tuple[str | None, str | None] = (None, None)

    @property
    def db(self) -> FlowceptDB:
        return type(self).db  # type: ignore[attr-defined,no-any-return]

    def start(self) -> Flowcept:
        if self._workflow is not None:
            return self
        store = self.db.store if self.save_workflow else None
        self._workflow = Workflow(self.workflow_name, store=store, workflow_id=self.workflow_id,
                                  custom_metadata=self.custom_metadata)
        self._workflow.__enter__()
        self._previous = (Flowcept.__dict__["current_workflow_id"], Flowcept.campaign_id)
        Flowcept.current_workflow_id = self.workflow_id
        Flowcept.campaign_id = self.campaign_id
        return self

    def stop(self, exc_type: Any = None) -> None:
        if self._workflow is None:
            return
        workflow, self._workflow = self._workflow, None
        Flowcept.current_workflow_id = self._previous[0]
        Flowcept.campaign_id = self._previous[1]
        workflow.__exit__(exc_type, None, None)

    def __enter__(self) -> Flowcept:
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.stop(exc_type)

    # -- Flowcept's static savers ---------------------------------------------------------------------

    @staticmethod
    def insert_or_update_object(object: Any, object_id: str | None = None, task_id: str | None = None,
                                workflow_id: str | None = None, object_type: str | None = None,
                                custom_metadata: Mapping[str, Any] | None = None,
                                save_data_in_collection: bool = False, pickle: bool = False,
                                control_version: bool = False, tags: list[str] | None = None) -> str:
        return Flowcept.db.insert_or_update_object(  # type: ignore[attr-defined,no-any-return]
            object, object_id, task_id, workflow_id, object_type, custom_metadata, save_data_in_collection,
            pickle, control_version, tags)

    @staticmethod
    def insert_or_update_ml_model(object: Any, object_id: str | None = None, **kwargs: Any) -> str:
        return Flowcept.db.insert_or_update_ml_model(object, object_id, **kwargs)  # type: ignore[attr-defined,no-any-return]

    @staticmethod
    def insert_or_update_dataset(object: Any, object_id: str | None = None, **kwargs: Any) -> str:
        return Flowcept.db.insert_or_update_dataset(object, object_id, **kwargs)  # type: ignore[attr-defined,no-any-return]

    @staticmethod
    def insert_or_update_torch_model(model: Any, object_id: str | None = None, **kwargs: Any) -> str:
        return Flowcept.db.insert_or_update_torch_model(model, object_id, **kwargs)  # type: ignore[attr-defined,no-any-return]
