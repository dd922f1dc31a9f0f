"""The bento's service, as bentofile.yaml names it (`nbship.serving.bento_service:ModelService`).

The only module that reads at import: the bento's `serving.json` and expectations suite,
from the `src/` folder it is shipped in. BentoML imports it to build and to serve; the
service itself is built by `service.create_service`, which tests call on their own folders.
"""

from nbship.serving.service import bento_root, create_service

ModelService = create_service(bento_root())
