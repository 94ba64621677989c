"""The page: an app bar (CT, bind address), a side panel with NoduleSAM's controls and nodule
table, and the quad view. Every control calls a :class:`~.app.WebApp` method; what it shows
comes from the trame state the app keeps (``WebApp.STATE``)."""
from __future__ import annotations

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3

UPLOAD_TRIGGER = "nodulesam_upload_chunk"
UPLOAD_END_TRIGGER = "nodulesam_upload_end"
# (id, label, attributes of the <input>): one CT file, or every file of a DICOM series folder
UPLOADS = (("open-file", "Open a CT file (.nrrd, .nii.gz, .mha)", []),
           ("open-folder", "Open a DICOM series folder", ["webkitdirectory"]))
COLUMNS = (("name", "Nodule"), ("score", "Score"), ("volume", "mm³"),
           ("diameter", "Ø mm"), ("mean_hu", "HU"), ("type", "Type"),
           ("lung_rads", "Lung-RADS"), ("status", "Status"))


def _upload(input_id: str, label: str, raw_attrs: list[str]) -> None:
    v3.VFileInput(
        id=input_id, label=label, density="compact", variant="outlined", hide_details=True,
        prepend_icon="", prepend_inner_icon="mdi-folder-open" if raw_attrs else "mdi-file-upload",
        multiple=bool(raw_attrs), raw_attrs=raw_attrs, disabled=("busy",), classes="mb-2",
        model_value=("[]",),  # the field stays empty: the page says what is open
        # trame-slicer's chunk loader sends the files to the server 10 MB at a time; the input
        # is cleared so that choosing the same files again opens them again
        change=("const files = Array.from($event.target.files); $event.target.value = null; "
                f"window.load_files_by_chunks(files, {{ trigger_name: '{UPLOAD_TRIGGER}' }})"
                f".then(({{ status, errorMsg }}) => trame.trigger('{UPLOAD_END_TRIGGER}', "
                "[status, errorMsg || '']))"),
    )


def _button(text: str, click, icon: str, button_id: str, disabled: str = "busy || !ct_loaded",
            **kwargs) -> None:
    v3.VBtn(text, click=click, prepend_icon=icon, id=button_id, disabled=(disabled,),
            density="comfortable", classes="ma-1", **kwargs)


def build_page(app) -> VAppLayout:
    with VAppLayout(app.server, full_height=True) as layout:
        with v3.VAppBar(density="compact", color="blue-grey-darken-4"):
            v3.VToolbarTitle("NoduleSAM", style="flex: 0 0 auto;", classes="mr-4")
            html.Span("{{ ct_name || 'no CT loaded' }}", id="ct-name", classes="text-body-2")
            v3.VSpacer()
            html.Span("{{ bind_info }}", id="bind-info", classes="text-caption mr-4")

        with v3.VNavigationDrawer(permanent=True, width=540, classes="pa-3"):
            for input_id, label, attrs in UPLOADS:
                _upload(input_id, label, attrs)
            with html.Div(classes="d-flex flex-wrap align-center"):
                v3.VSelect(v_model=("sensitivity",), items=("sensitivities",),
                           label="Sensitivity", density="compact", hide_details=True,
                           disabled=("busy",), style="max-width: 150px;", classes="ma-1")
                _button("Auto-segment", app.auto_segment, "mdi-auto-fix", "auto-segment",
                        color="primary")
            with html.Div(classes="d-flex flex-wrap"):
                _button("Add box", app.add_box, "mdi-vector-square-plus", "add-box")
                _button("Click nodule", app.click_nodule, "mdi-cursor-default-click", "click-nodule")
                _button("Delete box", app.delete_box, "mdi-delete", "delete-box",
                        disabled="busy || !selected")
                _button("Refine", app.refine, "mdi-refresh", "refine", color="primary")
                _button("Export", app.export, "mdi-content-save", "export")

            with html.Div(v_show=("busy || placing",), id="job", classes="my-2"):
                html.Div("{{ placing ? notice : job_title + ': ' + job_text }}", id="job-text",
                         classes="text-caption")
                with html.Div(classes="d-flex align-center"):
                    v3.VProgressLinear(v_show=("busy",), model_value=("job_progress",),
                                       id="job-progress",
                                       indeterminate=("job_progress < 0",), height=8,
                                       color="primary", classes="flex-grow-1 mr-2")
                    v3.VBtn("Cancel", click=app.cancel, id="cancel", size="small",
                            color="warning", prepend_icon="mdi-close")

            v3.VAlert(v_if=("error",), text=("error",), type="error", id="error",
                      density="compact", closable=True, classes="my-2",
                      click_close="error = ''")
            v3.VAlert(v_if=("notice",), text=("notice",), type="info", id="notice",
                      density="compact", classes="my-2")

            with v3.VTable(density="compact", id="nodules", classes="my-2 text-caption",
                           v_if=("nodules.length",)):
                with html.Thead(), html.Tr():
                    for _, title in COLUMNS:
                        html.Th(title, classes="px-1")
                with html.Tbody():
                    with html.Tr(v_for="row in nodules", key="row.name",
                                 style="cursor: pointer;",
                                 classes=("row.name === selected ? 'nodule-row selected "
                                          "bg-blue-grey-darken-2' : 'nodule-row'",),
                                 click=(app.select_row, "[row.name]")):
                        for key, _ in COLUMNS:
                            html.Td(f"{{{{ row.{key} }}}}", classes=f"col-{key} px-1")
            html.Div("Decision support for a radiologist, not a diagnosis. Click a row to "
                     "jump to its nodule; drag a box's handles in the slice views, then Refine.",
                     classes="text-caption text-medium-emphasis")

            with html.Div(v_if=("exports.length",), id="exports", classes="my-2"):
                html.Div("Exported (on the server: {{ export_folder }}):", classes="text-caption")
                with html.Div(v_for="file in exports", key="file.name"):
                    html.A("{{ file.name }}", href=("file.url",), download=("file.name",),
                           classes="export-link text-body-2")

            with v3.VDialog(v_model=("edited_dialog",), max_width=480, persistent=True):
                with v3.VCard(title="Segments edited by hand", id="edited-dialog"):
                    v3.VCardText("You edited these segments by hand: {{ edited_names.join(', ') }}. "
                                 "What should Refine do with them?")
                    with v3.VCardActions():
                        v3.VBtn("Keep my edits", click=(app.refine_edited, "['keep']"), id="keep")
                        v3.VBtn("Replace them", click=(app.refine_edited, "['replace']"),
                                id="replace")
                        v3.VBtn("Add new segments beside them",
                                click=(app.refine_edited, "['add']"), id="add")

        with v3.VMain():
            with html.Div(style="height: calc(100vh - 48px); width: 100%;",
                          classes="d-flex flex-row"):
                app.viewer.layout.initialize_layout_grid(layout)
    return layout
