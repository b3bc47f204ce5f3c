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
function Assert-ImagingDiskOffline {
    # A disk of an old machine is read or changed on the host only while no running VM uses it.
    param([Parameter(Mandatory = $true)] [string] $Path)
    $users = @(Get-VM | Where-Object { [string]$_.State -ne 'Off' } | Get-VMHardDiskDrive | Where-Object { $_.Path -eq $Path })
    if ($users.Count -gt 0) { throw "$Path belongs to the running VM $($users[0].VMName); it is used only while its VM is off" }
}

function Mount-ImagingVolume {
    # Mounts a VHDX without a drive letter and exposes its largest data partition at a fresh, empty folder
    # in the temp directory. Callers hold the provider's per-host mount lock and always call
    # Dismount-ImagingVolume in a finally block.
    param([Parameter(Mandatory = $true)] [string] $Path, [switch] $ReadOnly)
    $mountArgs = @{ Path = $Path; NoDriveLetter = $true; PassThru = $true }
    if ($ReadOnly) { $mountArgs['ReadOnly'] = $true }
    $vhd = Mount-VHD @mountArgs
    $mounted = [ordered]@{ Path = $Path; Folder = $null; DiskNumber = $vhd.DiskNumber; PartitionNumber = $null; Label = $null }
    try {
        $disk = Get-Disk -Number $vhd.DiskNumber
        if ($disk.IsOffline) { Set-Disk -Number $disk.Number -IsOffline $false }
        $partition = @(Get-Partition -DiskNumber $disk.Number | Where-Object { $_.Type -eq 'Basic' } |
            Sort-Object -Property Size -Descending)
        if ($partition.Count -eq 0) { throw "the disk $Path has no data partition" }
        $part = $partition[0]
        $mounted.PartitionNumber = $part.PartitionNumber
        $mounted.Label = [string](Get-Volume -Partition $part).FileSystemLabel
        $folder = Join-Path -Path ([System.IO.Path]::GetTempPath()) -ChildPath ('imaging-' + [guid]::NewGuid().ToString('N'))
        New-Item -ItemType Directory -Path $folder | Out-Null
        $mounted.Folder = $folder
        Add-PartitionAccessPath -DiskNumber $disk.Number -PartitionNumber $part.PartitionNumber -AccessPath ($folder + '\')
    }
    catch {
        Dismount-ImagingVolume -Mounted $mounted
        throw
    }
    return $mounted
}

function Dismount-ImagingVolume {
    # Undoes Mount-ImagingVolume. The mount folder is removed only when empty, never recursively, so a
    # volume that is still mounted there can never be deleted by accident.
    param([Parameter(Mandatory = $true)] [System.Collections.IDictionary] $Mounted)
    if ($null -ne $Mounted.Folder -and $null -ne $Mounted.PartitionNumber) {
        Remove-PartitionAccessPath -DiskNumber $Mounted.DiskNumber -PartitionNumber $Mounted.PartitionNumber `
            -AccessPath ($Mounted.Folder + '\') -ErrorAction SilentlyContinue
    }
    Dismount-VHD -Path $Mounted.Path
    if ($null -ne $Mounted.Folder -and (Test-Path -LiteralPath $Mounted.Folder -PathType Container)) {
        if (@(Get-ChildItem -LiteralPath $Mounted.Folder -Force).Count -eq 0) {
            [System.IO.Directory]::Delete($Mounted.Folder, $false)
        }
    }
}

function Get-ImagingVolumeFiles {
    # Every file under a mounted volume, as paths relative to its root. Reparse points (junctions, links)
    # are listed as skipped and never followed: on an offline disk they point into the host's own C:.
    param(
        [Parameter(Mandatory = $true)] [string] $Root,
        [string[]] $ExcludeRel = @()
    )
    $always = @('System Volume Information', '$Recycle.Bin', 'pagefile.sys', 'hiberfil.sys', 'swapfile.sys')
    $exclude = @($always + $ExcludeRel | ForEach-Object { $_.TrimEnd('\').ToLowerInvariant() })
    $files = New-Object System.Collections.Generic.List[object]
    $skipped = New-Object System.Collections.Generic.List[string]
    $pending = New-Object System.Collections.Generic.Stack[string]
    $pending.Push('')
    while ($pending.Count -gt 0) {
        $rel = $pending.Pop()
        $dir = New-Object System.IO.DirectoryInfo -ArgumentList (Join-Path -Path $Root -ChildPath $rel)
        try { $entries = @($dir.GetFileSystemInfos()) }
        catch { $skipped.Add($rel); continue }
        foreach ($entry in $entries) {
            $childRel = if ($rel) { $rel + '\' + $entry.Name } else { $entry.Name }
            if ($exclude -contains $childRel.ToLowerInvariant()) { continue }
            if (($entry.Attributes -band [System.IO.FileAttributes]::ReparsePoint) -ne 0) {
                $skipped.Add($childRel)
                continue
            }
            if ($entry -is [System.IO.DirectoryInfo]) { $pending.Push($childRel) }
            else {
                $files.Add([pscustomobject]@{ Rel = $childRel; Size = $entry.Length; Full = $entry.FullName })
            }
        }
    }
    return [pscustomobject]@{ Files = $files.ToArray(); Skipped = $skipped.ToArray() }
}

$ImagingAction = 'write_settings'
$Result = [ordered]@{ ok = $true; changed = $false; action = $ImagingAction }
try {
    # Makes the Settings volume hold exactly the rendered files, byte for byte (given as base64: binary files,
    # CRLF and UTF-16 text stay as they are), plus their manifest. The
    # manifest text (each file's sha256 and one digest over them all) is computed by imaging.powershell, so
    # its digest is byte for byte the one the plan expects. Files that are already right are not rewritten;
    # files the render does not contain are removed and listed (the volume was backed up before).
    # The provider holds the host's mount lock while this runs.
    $Path = 'D:\Imaging\instruments\NDXZOOM\NDXZOOM-settings-7.vhdx'
    $Files = [ordered]@{'globals.txt' = 'SU5TVFJVTUVOVD1aT09NDQpCRUFNTElORT0nbXVvbicNCg=='; 'config/blocks.xml' = 'PGJsb2NrcyBuYW1lPSJaT09NJ3MiPiQobm90IGV4cGFuZGVkKSBgbjwvYmxvY2tzPgo='}
    $ManifestName = '.imaging/manifest.json'
    $ManifestText = '{
  "digest": "6352e706ef5bd487f2220f1749bb353dbe0bea6cca84422e62e2076a443f19b9",
  "files": {
    "config/blocks.xml": "75010623c6c21733f4757ab98a40d66329742fe620759731fcea209e979577ff",
    "globals.txt": "1081c5b409de305e1854d5da00d59b1bebb8f5518d925fa79a76f64279fb600a"
  }
}
'
    $Digest = '6352e706ef5bd487f2220f1749bb353dbe0bea6cca84422e62e2076a443f19b9'
    $utf8 = New-Object System.Text.UTF8Encoding -ArgumentList $false
    $manifestRel = $ManifestName.Replace('/', '\')
    $wanted = [ordered]@{}
    foreach ($rel in $Files.Keys) { $wanted[([string]$rel).Replace('/', '\')] = [System.Convert]::FromBase64String([string]$Files[$rel]) }
    $wanted[$manifestRel] = $utf8.GetBytes($ManifestText)
    $written = New-Object System.Collections.Generic.List[string]
    $removed = New-Object System.Collections.Generic.List[string]
    $mounted = Mount-ImagingVolume -Path $Path
    try {
        foreach ($rel in $wanted.Keys) {
            $bytes = $wanted[$rel]
            $target = Join-Path -Path $mounted.Folder -ChildPath $rel
            $same = $false
            if (Test-Path -LiteralPath $target -PathType Leaf) {
                $old = [System.IO.File]::ReadAllBytes($target)
                $same = ($old.Length -eq $bytes.Length) -and ([System.Convert]::ToBase64String($old) -ceq [System.Convert]::ToBase64String($bytes))
            }
            if (-not $same) {
                Initialize-ImagingFolder -Path (Split-Path -Path $target -Parent)
                [System.IO.File]::WriteAllBytes($target, $bytes)
                $written.Add($rel.Replace('\', '/'))
            }
        }
        $present = Get-ImagingVolumeFiles -Root $mounted.Folder
        foreach ($file in $present.Files) {
            if (-not $wanted.Contains($file.Rel)) {
                Remove-Item -LiteralPath $file.Full -Force
                $removed.Add($file.Rel.Replace('\', '/'))
            }
        }
    }
    finally {
        Dismount-ImagingVolume -Mounted $mounted
    }
    $Result['files'] = $Files.Count
    $Result['digest'] = $Digest
    $Result['written'] = @($written.ToArray())
    $Result['removed'] = @($removed.ToArray())
    $Result['changed'] = ($written.Count + $removed.Count) -gt 0
    Write-ImagingResult -Result $Result
}
catch {
    Write-ImagingFailure -ErrorRecord $_ -Result $Result
}
