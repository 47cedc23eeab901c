"""Drives tokengate's admin API with python-gitlab, unchanged, as a GitLab
script would: create, list and delete deploy tokens of a project and a group.

    TG_URL=http://127.0.0.1:PORT TG_ADMIN_TOKEN=... python python_gitlab.py

Prints one JSON object per line: {"step": ..., ...}.
"""
import json
import os

import gitlab

gl = gitlab.Gitlab(os.environ["TG_URL"], private_token=os.environ["TG_ADMIN_TOKEN"])


def say(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


project = gl.projects.get("acme/web", lazy=True)
group = gl.groups.get("acme", lazy=True)

made = project.deploytokens.create(
    {
        "name": "python-gitlab",
        "scopes": ["read_package_registry", "write_package_registry"],
        "expires_at": "2099-01-02",
        "username": "py-deployer",
    }
)
say("project_created", id=made.id, token=made.token, username=made.username,
    scopes=made.scopes, expires_at=made.expires_at)
group_made = group.deploytokens.create({"name": "python-gitlab-group", "scopes": ["read_registry"]})
say("group_created", id=group_made.id, username=group_made.username)

# Enough tokens for several pages: python-gitlab follows the Link headers.
for i in range(3):
    project.deploytokens.create({"name": f"page-{i}", "scopes": ["read_repository"]})
listed = project.deploytokens.list(get_all=True, per_page=2)
say("project_listed", names=sorted(t.name for t in listed))
fetched = project.deploytokens.get(made.id)
say("project_fetched", id=fetched.id, name=fetched.name, revoked=fetched.revoked)
everything = gl.deploytokens.list(get_all=True)
say("instance_listed", count=len(everything))
say("group_listed", names=[t.name for t in group.deploytokens.list(get_all=True)])

project.deploytokens.delete(made.id)
group.deploytokens.delete(group_made.id)
say("deleted", ids=[made.id, group_made.id])
try:
    project.deploytokens.delete(made.id)
    say("deleted_twice", error=None)
except gitlab.exceptions.GitlabDeleteError as e:
    say("deleted_twice", error=e.response_code)
try:
    project.deploytokens.create({"name": "bad", "scopes": ["api"]})
    say("bad_scope", error=None)
except gitlab.exceptions.GitlabCreateError as e:
    say("bad_scope", error=e.response_code, message=str(e.error_message))
active = [t.name for t in project.deploytokens.list(get_all=True, active=True)]
say("active_listed", names=sorted(active))
