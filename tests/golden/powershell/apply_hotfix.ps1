param([string] $GuestUser, [string] $GuestPassword, [string] $JoinUser, [string] $JoinPassword)
# A step script rendered by imaging.powershell; every value in it came through ps_literal.
Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'

function Write-ImagingResult {
    # The only way a step reports: one compressed JSON line between two marker lines.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result)
    $json = ConvertTo-Json -InputObject $Result -Depth 8 -Compress
    Write-Output '<<<IMAGING-RESULT>>>'
    Write-Output $json
    Write-Output '<<<END-IMAGING-RESULT>>>'
}

function Write-ImagingFailure {
    # A failed step still reports in the same frame, saying whether it had already changed something.
    param(
        [Parameter(Mandatory = $true)] [System.Management.Automation.ErrorRecord] $ErrorRecord,
        [Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Result
    )
    $where = ''
    if ($null -ne $ErrorRecord.InvocationInfo) { $where = [string]$ErrorRecord.InvocationInfo.PositionMessage }
    $Result['ok'] = $false
    $Result['error'] = [string]$ErrorRecord.Exception.Message
    $Result['where'] = $where
    # What kind of failure it was, for the provider's retry of a file another process holds (ObjectInUse)
    $Result['error_id'] = [string]$ErrorRecord.FullyQualifiedErrorId
    $Result['category'] = [string]$ErrorRecord.CategoryInfo.Category
    $Result['hresult'] = [int]$ErrorRecord.Exception.HResult
    Write-ImagingResult -Result $Result
}

function Initialize-ImagingFolder {
    # Creates a folder (and its parents) if it is missing; never touches an existing one.
    param([Parameter(Mandatory = $true)] [string] $Path)
    if (-not (Test-Path -LiteralPath $Path -PathType Container)) {
        New-Item -ItemType Directory -Path $Path -Force | Out-Null
    }
}

function Get-ImagingSha256 {
    param([Parameter(Mandatory = $true)] [string] $Path)
    (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
}

$ImagingAction = 'apply_hotfix'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    if ([string]::IsNullOrEmpty($GuestUser) -or $null -eq $GuestPassword) {
        throw 'no guest credential was passed: set IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD'
    }
    $GuestSecret = ConvertTo-SecureString -String $GuestPassword -AsPlainText -Force
    $GuestCredential = New-Object System.Management.Automation.PSCredential -ArgumentList $GuestUser, $GuestSecret
    # The hotfix package was staged on the host by stage_artifact (a verified, read-only tar). The host
    # unpacks it once beside itself, checks every file's sha256, and copies the files into the guest over a
    # PowerShell Direct session (Copy-Item -ToSession: no network share, no drive letter). Inside the guest,
    # each file the hotfix replaces is backed up once to the Var volume, the new file is written beside its
    # target and renamed over it (atomic on NTFS), hashes are checked, and the ledger on Var is updated.
    # The package's pre script runs in the guest before any file is placed, its post script after all are.
    # Running it again after success changes nothing; after a failure it resumes without re-backing up.
    $Vm = 'NDXZOOM'
    $HotfixId = 'HF-2026C1-001'
    $PackagePath = 'D:\Imaging\hotfixes\hotfix-HF-2026C1-001-0123456789ab.tar'
    $Files = @([ordered]@{'path' = 'server/bin/module00000.bin'; 'sha256' = '3d942581ecd4be9cccbb24d52e666e4ea56ee1043ea684af15059458a58136e5'}, [ordered]@{'path' = 'server/lib/runlock.cfg'; 'sha256' = '27749562e5e86a1852e51b54734d6aec60775276f416dc71a5e172c618f31d00'})
    $BackupRel = 'imaging/hotfix-backups/2026C1.0-ab12cd34/HF-2026C1-001'
    $Ledger = 'C:\Instrument\Var\imaging\hotfixes.json'
    $Generation = '2026C1.0-ab12cd34'
    $Entry = [ordered]@{'description' = 'Fix the run-number race'; 'operation' = '0123456789ab'; 'who' = 'jbloggs'; 'when' = '20261121T193000Z'; 'release' = '2026C1.0'}
    $Scripts = @([ordered]@{'phase' = 'pre'; 'path' = 'scripts/stop-server.ps1'}, [ordered]@{'phase' = 'post'; 'path' = 'scripts/check-runlock.ps1'})
    $AppsLink = 'C:\Instrument\Apps'
    if (-not (Test-Path -LiteralPath $PackagePath -PathType Leaf)) { throw "the hotfix package $PackagePath is not staged on this host" }
    $unpacked = $PackagePath + '.d'
    if (-not (Test-Path -LiteralPath $unpacked -PathType Container)) {
        $partial = $unpacked + '.partial'
        if (Test-Path -LiteralPath $partial) { Remove-Item -LiteralPath $partial -Recurse -Force }
        New-Item -ItemType Directory -Path $partial -Force | Out-Null
        & "$env:SystemRoot\System32\tar.exe" -x -f $PackagePath -C $partial
        if ($LASTEXITCODE -ne 0) { throw "tar.exe could not unpack $PackagePath (exit $LASTEXITCODE)" }
        Move-Item -LiteralPath $partial -Destination $unpacked
    }
    foreach ($f in @($Files)) {
        $src = Join-Path -Path (Join-Path -Path $unpacked -ChildPath 'files') -ChildPath (([string]$f.path).Replace('/', '\'))
        if (-not (Test-Path -LiteralPath $src -PathType Leaf)) { throw "the package lacks $($f.path)" }
        $actual = (Get-FileHash -LiteralPath $src -Algorithm SHA256).Hash.ToLowerInvariant()
        if ($actual -ne [string]$f.sha256) { throw "$($f.path) in the staged package has sha256 $actual, expected $($f.sha256)" }
    }
    $session = New-PSSession -VMName $Vm -Credential $GuestCredential -ErrorAction Stop
    try {
        $incoming = Invoke-Command -Session $session -ArgumentList $HotfixId -ScriptBlock {
            param([string] $Id)
            $dir = Join-Path -Path $env:TEMP -ChildPath ('imaging-hotfix-' + $Id)
            if (Test-Path -LiteralPath $dir) { Remove-Item -LiteralPath $dir -Recurse -Force }
            New-Item -ItemType Directory -Path $dir -Force | Out-Null
            $dir
        }
        $i = 0
        foreach ($f in @($Files)) {
            $src = Join-Path -Path (Join-Path -Path $unpacked -ChildPath 'files') -ChildPath (([string]$f.path).Replace('/', '\'))
            Copy-Item -LiteralPath $src -Destination (Join-Path -Path ([string]$incoming) -ChildPath ([string]$i)) -ToSession $session
            $i++
        }
        foreach ($sc in @($Scripts)) {
            $src = Join-Path -Path $unpacked -ChildPath (([string]$sc.path).Replace('/', '\'))
            if (-not (Test-Path -LiteralPath $src -PathType Leaf)) { throw "the package lacks its $($sc.phase) script $($sc.path)" }
            Copy-Item -LiteralPath $src -Destination (Join-Path -Path ([string]$incoming) -ChildPath ([string]$sc.phase + '.ps1')) -ToSession $session
        }
        $request = ConvertTo-Json -Depth 6 -Compress -InputObject ([ordered]@{
            id = $HotfixId; files = @($Files); backup_rel = $BackupRel; ledger = $Ledger; generation = $Generation
            entry = $Entry; apps = $AppsLink; incoming = [string]$incoming; scripts = @($Scripts)
        })
        $answer = Invoke-Command -Session $session -ErrorAction Stop -ArgumentList $request -ScriptBlock {
            param([string] $RequestJson)
            Set-StrictMode -Version 3
            $ErrorActionPreference = 'Stop'
            $r = ConvertFrom-Json -InputObject $RequestJson
            function Get-Sha([string] $Path) {
                if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) { return $null }
                return (Get-FileHash -LiteralPath $Path -Algorithm SHA256).Hash.ToLowerInvariant()
            }
            function Write-Atomic([string] $Path, [string] $Text) {
                $folder = Split-Path -Path $Path -Parent
                if (-not (Test-Path -LiteralPath $folder -PathType Container)) { New-Item -ItemType Directory -Path $folder -Force | Out-Null }
                [System.IO.File]::WriteAllText($Path + '.partial', $Text, (New-Object System.Text.UTF8Encoding -ArgumentList $false))
                Move-Item -LiteralPath ($Path + '.partial') -Destination $Path -Force
            }
            $apps = (Get-Item -LiteralPath ([string]$r.apps)).FullName
            $var = Split-Path -Path (Split-Path -Path ([string]$r.ledger) -Parent) -Parent
            $ledger = [ordered]@{ generations = [ordered]@{} }
            if (Test-Path -LiteralPath $r.ledger -PathType Leaf) { $ledger = ConvertFrom-Json -InputObject ([System.IO.File]::ReadAllText($r.ledger)) }
            $gens = $ledger.generations
            $present = $null
            if ($null -ne $gens.PSObject.Properties[$r.generation]) { $present = $gens.($r.generation).PSObject.Properties[$r.id] }
            $current = @{}
            foreach ($f in @($r.files)) { $current[[string]$f.path] = Get-Sha (Join-Path -Path $apps -ChildPath ([string]$f.path).Replace('/', '\')) }
            $done = $true
            foreach ($f in @($r.files)) { if ($current[[string]$f.path] -ne [string]$f.sha256) { $done = $false } }
            if ($null -ne $present -and $done) { return 'unchanged' }
            function Assert-NotLoaded([string] $AppsLink, [string[]] $Paths) {
                # Windows refuses to replace a running EXE or a loaded DLL. Refuse before anything changes,
                # naming each file and the process that holds it, so the package can name its service under
                # 'restart' (stopped before the files are replaced, started after). The Apps volume is seen
                # through its link and at its mount folder: a module's path may read either way.
                $roots = @([string]$AppsLink)
                $item = Get-Item -LiteralPath $AppsLink -Force
                if (($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) { $roots += [string]@($item.Target)[0] }
                $wanted = @{}
                foreach ($p in $Paths) {
                    foreach ($root in $roots) { $wanted[(Join-Path -Path $root -ChildPath $p.Replace('/', '\')).ToLowerInvariant()] = $p }
                }
                $busy = New-Object System.Collections.Generic.List[string]
                foreach ($proc in @(Get-Process)) {
                    $modules = @()
                    try { $modules = @($proc.Modules) } catch { $modules = @() }
                    foreach ($m in $modules) {
                        $file = ([string]$m.FileName).ToLowerInvariant()
                        if ($wanted.ContainsKey($file)) { $busy.Add("$($wanted[$file]) (loaded by $($proc.ProcessName), pid $($proc.Id))") }
                    }
                }
                if ($busy.Count -gt 0) {
                    throw ((@($busy.ToArray()) -join ', ') + ": a running program's file cannot be replaced; nothing was changed. Name its service under 'restart' in hotfix.yaml: it is stopped before the files are replaced and started after")
                }
            }
            Assert-NotLoaded ([string]$r.apps) @(@($r.files) | Where-Object { $current[[string]$_.path] -ne [string]$_.sha256 } | ForEach-Object { [string]$_.path })
            $backup = Join-Path -Path $var -ChildPath (([string]$r.backup_rel).Replace('/', '\'))
            $listing = Join-Path -Path $backup -ChildPath 'backup.json'
            if (-not (Test-Path -LiteralPath $listing -PathType Leaf)) {
                $saved = New-Object System.Collections.Generic.List[object]
                foreach ($f in @($r.files)) {
                    $target = Join-Path -Path $apps -ChildPath ([string]$f.path).Replace('/', '\')
                    if (Test-Path -LiteralPath $target -PathType Leaf) {
                        $copy = Join-Path -Path (Join-Path -Path $backup -ChildPath 'files') -ChildPath ([string]$f.path).Replace('/', '\')
                        New-Item -ItemType Directory -Path (Split-Path -Path $copy -Parent) -Force | Out-Null
                        Copy-Item -LiteralPath $target -Destination $copy -Force
                    }
                    $saved.Add([ordered]@{ path = [string]$f.path; previous_sha256 = $current[[string]$f.path] })
                }
                Write-Atomic $listing (ConvertTo-Json -Depth 5 -InputObject ([ordered]@{ hotfix = $r.id; generation = $r.generation; files = @($saved.ToArray()) }))
            }
            $phases = @(@($r.scripts) | ForEach-Object { [string]$_.phase })
            if ($phases -contains 'pre') { & (Join-Path -Path $r.incoming -ChildPath 'pre.ps1') }
            $i = 0
            foreach ($f in @($r.files)) {
                $target = Join-Path -Path $apps -ChildPath ([string]$f.path).Replace('/', '\')
                $folder = Split-Path -Path $target -Parent
                if (-not (Test-Path -LiteralPath $folder -PathType Container)) { New-Item -ItemType Directory -Path $folder -Force | Out-Null }
                Copy-Item -LiteralPath (Join-Path -Path $r.incoming -ChildPath ([string]$i)) -Destination ($target + '.hotfix-partial') -Force
                Move-Item -LiteralPath ($target + '.hotfix-partial') -Destination $target -Force
                if ((Get-Sha $target) -ne [string]$f.sha256) { throw "after writing, $($f.path) does not match its sha256" }
                $i++
            }
            if ($phases -contains 'post') { & (Join-Path -Path $r.incoming -ChildPath 'post.ps1') }
            if ($null -eq $gens.PSObject.Properties[$r.generation]) { $gens | Add-Member -NotePropertyName $r.generation -NotePropertyValue ([pscustomobject]@{}) }
            $entry = [ordered]@{}
            foreach ($p in $r.entry.PSObject.Properties) { $entry[$p.Name] = $p.Value }
            $entry['backup'] = $r.backup_rel
            $entry['files'] = @(foreach ($f in @($r.files)) { [ordered]@{ path = [string]$f.path; sha256 = [string]$f.sha256; previous_sha256 = $current[[string]$f.path] } })
            $gens.($r.generation) | Add-Member -NotePropertyName $r.id -NotePropertyValue ([pscustomobject]$entry) -Force
            Write-Atomic $r.ledger (ConvertTo-Json -Depth 8 -InputObject $ledger)
            Remove-Item -LiteralPath $r.incoming -Recurse -Force
            'applied'
        }
    }
    finally { Remove-PSSession -Session $session }
    $Result['changed'] = ([string]$answer -eq 'applied')
    $Result['files'] = @($Files).Count
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
